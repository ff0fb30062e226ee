"""Blob push: sessions, chunks, monolithic uploads, mounts, and what failures leave behind."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from datetime import UTC
from urllib.parse import urlsplit

import httpx
import pytest

from registry.storage.metadata import repository_key
from registry.storage.uploads import MAX_PENDING
from tests.conftest import Server, StorageView
from tests.helpers import error_codes, push_blob, push_image, sha256


def start(client: httpx.Client, repo: str) -> str:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    assert response.headers["Range"] == "0-0"
    assert response.headers["Docker-Upload-UUID"] == upload_id_of(response.headers["Location"])
    return response.headers["Location"]


def block_size(client: httpx.Client, repo: str) -> int:
    """The registry's storage block size, as it tells every client (OCI-Chunk-Min-Length)."""
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202
    return int(response.headers["OCI-Chunk-Min-Length"])


def more_than_stays_staged(client: httpx.Client, repo: str) -> int:
    """A chunk too large to stay staged until the closing PUT: its PATCH commits it."""
    return MAX_PENDING * block_size(client, repo) + 1024 * 1024


def upload_id_of(location: str) -> str:
    return urlsplit(location).path.rsplit("/", 1)[1]


def patch(client: httpx.Client, location: str, data: bytes, **headers: str) -> str:
    """Send a chunk; the Location to go on with (every client follows the latest one)."""
    response = client.patch(location, content=data, headers=headers)
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def test_post_then_put_with_body(client: httpx.Client, repo: str) -> None:
    data = os.urandom(2048)
    location = start(client, repo)
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    response = client.put(location, params={"digest": sha256(data)}, content=data)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
    assert response.headers["Docker-Content-Digest"] == sha256(data)
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}", follow_redirects=True).content == data


def test_chunked_upload_with_content_range(client: httpx.Client, repo: str) -> None:
    block = block_size(client, repo)
    data = os.urandom(block + 1024 * 1024 + 333)  # the chunks straddle a block boundary
    cut1, cut2 = 1_000_000, block + 300_000
    location = start(client, repo)
    for begin, end in ((0, cut1), (cut1, cut2)):
        response = client.patch(
            location,
            content=data[begin:end],
            headers={"Content-Range": f"{begin}-{end - 1}", "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 202, response.text
        assert response.headers["Range"] == f"0-{end - 1}"
        location = response.headers["Location"]
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{cut2 - 1}"
    # The last chunk travels in the closing PUT.
    response = client.put(location, params={"digest": sha256(data)}, content=data[cut2:],
                          headers={"Content-Range": f"{cut2}-{len(data) - 1}"})
    assert response.status_code == 201, response.text
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}", follow_redirects=True).content == data


def test_streamed_patch_without_content_range(client: httpx.Client, repo: str) -> None:
    data = os.urandom(3 * 1024 * 1024)

    def body():  # chunked transfer encoding, no Content-Length: how skopeo sends a layer
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    location = start(client, repo)
    response = client.patch(location, content=body())
    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    response = client.put(response.headers["Location"], params={"digest": sha256(data)})
    assert response.status_code == 201


def test_out_of_order_chunk_is_refused_with_current_range(client: httpx.Client, repo: str) -> None:
    location = patch(client, start(client, repo), b"a" * 100, **{"Content-Range": "0-99"})
    response = client.patch(location, content=b"b" * 100, headers={"Content-Range": "200-299"})
    assert response.status_code == 416
    assert response.headers["Range"] == "0-99"
    assert response.headers["Location"] == location
    # The upload goes on from where it really is.
    location = patch(client, location, b"c" * 50, **{"Content-Range": "100-149"})
    data = b"a" * 100 + b"c" * 50
    assert client.put(location, params={"digest": sha256(data)}).status_code == 201


def test_content_range_disagreeing_with_length(client: httpx.Client, repo: str) -> None:
    location = start(client, repo)
    response = client.patch(location, content=b"x" * 10, headers={"Content-Range": "0-19"})
    assert response.status_code == 400
    assert error_codes(response) == ["SIZE_INVALID"]
    assert client.get(location).headers["Range"] == "0-0"


def test_digest_mismatch_is_refused_and_changes_nothing(client: httpx.Client, repo: str, storage: StorageView) -> None:
    good_digest, _ = push_image(client, repo, "stable")
    before = storage.repository_rows(repo).keys()
    location = start(client, repo)
    response = client.put(location, params={"digest": sha256(b"other bytes")}, content=b"these bytes")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/{repo}/blobs/{sha256(b'other bytes')}").status_code == 404
    assert client.head(f"/v2/{repo}/blobs/{sha256(b'these bytes')}").status_code == 404
    # Existing image untouched; no link was made.
    assert client.get(f"/v2/{repo}/manifests/stable").headers["Docker-Content-Digest"] == good_digest
    assert {key for key in storage.repository_rows(repo) if not key.startswith("u:")} == {
        key for key in before if not key.startswith("u:")
    }


def test_monolithic_post_with_wrong_digest_leaves_no_trace(client: httpx.Client, repo: str,
                                                          storage: StorageView) -> None:
    blobs_before = storage.blob_names("data/")
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(b"a")}, content=b"b")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert storage.repository_rows(repo) == {}
    assert storage.blob_names("data/") == blobs_before


def test_put_without_digest(client: httpx.Client, repo: str) -> None:
    location = start(client, repo)
    response = client.put(location, content=b"abc")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


@pytest.mark.parametrize("kind", ["staged", "committed"])
def test_cancel_removes_the_session_and_its_bytes(client: httpx.Client, repo: str, storage: StorageView,
                                                  kind: str) -> None:
    size = 1000 if kind == "staged" else more_than_stays_staged(client, repo)
    first = start(client, repo)
    location = patch(client, first, os.urandom(size))
    upload_id = upload_id_of(location)
    # A small chunk waits, staged, for the closing PUT; more than a few blocks are committed.
    assert (f"data/{upload_id}" in storage.blob_names("data/")) == (kind == "committed")
    assert client.delete(location).status_code == 204
    # The bytes are freed at once; an empty marker stays until the session expires, so a
    # request with an older state of the upload cannot bring it back.
    assert storage.blobs.get_blob_client(f"data/{upload_id}").get_blob_properties().size == 0
    for url in (first, location):
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            response = client.request(method, url, params={"digest": sha256(b"")})
            assert response.status_code == 404, method
            assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_upload_is_bound_to_its_repository(client: httpx.Client, repo: str) -> None:
    location = start(client, repo)
    for elsewhere in (location.replace(f"/v2/{repo}/", f"/v2/{repo}-elsewhere/"),  # its state, another name
                      f"/v2/{repo}/blobs/uploads/{upload_id_of(location)}"):  # no state
        response = client.patch(elsewhere, content=b"x")
        assert response.status_code == 404
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_upload_ids_are_unguessable(client: httpx.Client, repo: str) -> None:
    ids = {upload_id_of(start(client, repo)) for _ in range(5)}
    assert len(ids) == 5
    assert all(len(upload_id) >= 32 for upload_id in ids)


def test_empty_blob(client: httpx.Client, repo: str) -> None:
    location = start(client, repo)
    response = client.put(location, params={"digest": sha256(b"")})
    assert response.status_code == 201, response.text
    head = client.head(f"/v2/{repo}/blobs/{sha256(b'')}")
    assert head.status_code == 200 and head.headers["Content-Length"] == "0"


def test_same_content_is_stored_once(client: httpx.Client, repo: str, storage: StorageView) -> None:
    data = os.urandom(4321)
    push_blob(client, repo, data)
    count = len(storage.blob_names("data/"))
    push_blob(client, f"{repo}/copy", data)
    assert len(storage.blob_names("data/")) == count


def test_cross_repository_mount(client: httpx.Client, repo: str) -> None:
    data = os.urandom(600)
    digest = push_blob(client, repo, data)
    response = client.post(f"/v2/{repo}/mounted/blobs/uploads/", params={"mount": digest, "from": repo})
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/{repo}/mounted/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert client.head(f"/v2/{repo}/mounted/blobs/{digest}").status_code == 200


def test_mount_of_unknown_blob_falls_back_to_an_upload(client: httpx.Client, repo: str) -> None:
    data = os.urandom(600)
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(data), "from": f"{repo}/none"})
    assert response.status_code == 202
    put = client.put(response.headers["Location"], params={"digest": sha256(data)}, content=data)
    assert put.status_code == 201


def test_mount_from_an_invalid_name(client: httpx.Client, repo: str) -> None:
    response = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(b"x"), "from": "Bad/NAME"})
    assert response.status_code == 400
    assert error_codes(response) == ["NAME_INVALID"]


def _send_partial_request(server: Server, path: str, announced: int, sent: bytes) -> None:
    """Announce `announced` bytes, send fewer, then vanish — a client that died mid-upload."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        head = (
            f"PATCH {path} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {announced}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        time.sleep(0.5)


def test_interrupted_upload_is_resumable_and_harms_nothing(
    client: httpx.Client, server: Server, repo: str, storage: StorageView
) -> None:
    image_digest, _ = push_image(client, repo, "v1")
    first = os.urandom(1024 * 1024)
    location = patch(client, start(client, repo), first, **{"Content-Range": f"0-{len(first) - 1}"})
    # A block and a MiB sent (more than a staged block), a MiB more announced; the connection drops.
    block = block_size(client, repo)
    _send_partial_request(server, location, block + 2 * 1024 * 1024, os.urandom(block + 1024 * 1024))
    time.sleep(0.5)
    status = client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{len(first) - 1}"  # nothing of the broken chunk counts
    rest = os.urandom(2 * 1024 * 1024)
    next_range = f"{len(first)}-{len(first) + len(rest) - 1}"
    location = patch(client, status.headers["Location"], rest, **{"Content-Range": next_range})
    data = first + rest
    assert client.put(location, params={"digest": sha256(data)}).status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}", follow_redirects=True).content == data
    assert client.get(f"/v2/{repo}/manifests/v1").headers["Docker-Content-Digest"] == image_digest


def test_expired_uploads_are_purged_with_their_bytes(client: httpx.Client, proxy_client: httpx.Client, repo: str,
                                                    storage: StorageView, azurite) -> None:
    import asyncio
    from datetime import datetime, timedelta

    from registry.app import BerthApplication
    from registry.settings import load_settings
    from tests.conftest import CONTAINER, TABLE_PREFIX

    # An upload with committed bytes (more than stay staged), and a cancelled one's marker.
    location = patch(client, start(client, repo), os.urandom(more_than_stays_staged(client, repo)))
    upload_id = upload_id_of(location)
    cancelled = start(client, repo)
    assert client.delete(cancelled).status_code == 204
    assert {f"data/{upload_id}", f"data/{upload_id_of(cancelled)}"} <= set(storage.blob_names("data/"))
    settings = load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
                              "BERTH_BLOB_CONTAINER": CONTAINER, "BERTH_TABLE_PREFIX": TABLE_PREFIX})

    async def purge(now: datetime) -> int:
        berth = BerthApplication(settings)
        try:
            return await (await berth.context()).store.uploads.purge_expired(now)
        finally:
            await berth.close()

    # A session row left behind by a finished upload must not take the finished bytes with it.
    kept = os.urandom(500)
    kept_digest = push_blob(client, repo, kept)
    location_of_kept = storage.repository_rows(repo)[f"b:{kept_digest}"]["location"]
    storage.tables.get_table_client(f"{TABLE_PREFIX}repos").create_entity({
        "PartitionKey": repository_key(repo), "RowKey": "u:leftover", "location": location_of_kept,
        "owner": "anonymous:anonymous", "expires": datetime.now(UTC) - timedelta(hours=1),
    })
    assert asyncio.run(purge(datetime.now(UTC))) >= 1
    assert "u:leftover" not in storage.repository_rows(repo)
    assert client.get(f"/v2/{repo}/blobs/{kept_digest}", follow_redirects=True).content == kept
    assert client.get(location).status_code == 204  # not expired yet: untouched
    assert asyncio.run(purge(datetime.now(UTC) + timedelta(days=2))) >= 2
    assert not {f"data/{upload_id}", f"data/{upload_id_of(cancelled)}"} & set(storage.blob_names("data/"))
    # Another instance (the proxy server shares the storage) no longer knows the upload.
    assert error_codes(proxy_client.get(location)) == ["BLOB_UPLOAD_UNKNOWN"]


@pytest.mark.parametrize("kind", ["staged", "committed"])
def test_concurrent_chunks_at_the_same_offset_cannot_both_land(server: Server, repo: str, kind: str) -> None:
    """Two chunks sent at once from one state: committed chunks race at the PATCH (one 416);
    chunks left staged race at the closing PUT, and only one of them finishes the upload."""
    from concurrent.futures import ThreadPoolExecutor

    with httpx.Client(base_url=server.url, timeout=60) as setup:
        # Staged: more than one block, fewer than stay staged.
        size = block_size(setup, repo) + 1024 * 1024 if kind == "staged" else more_than_stays_staged(setup, repo)
        location = start(setup, repo)
    chunks = {name: bytes([name]) * size for name in (1, 2)}

    def send(name: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            headers = {"Content-Range": f"0-{len(chunks[name]) - 1}"}
            return http.patch(location, content=chunks[name], headers=headers)

    with ThreadPoolExecutor(2) as pool:
        answers = dict(zip(chunks, pool.map(send, chunks), strict=True))
    statuses = sorted(answer.status_code for answer in answers.values())
    assert statuses == ([202, 202] if kind == "staged" else [202, 416])
    with httpx.Client(base_url=server.url, timeout=60) as http:
        finished = {name: http.put(answer.headers["Location"], params={"digest": sha256(chunks[name])})
                    for name, answer in answers.items() if answer.status_code == 202}
        winners = [name for name, done in finished.items() if done.status_code == 201]
        assert len(winners) == 1, {name: done.text for name, done in finished.items()}
        for name, done in finished.items():
            if name not in winners:
                assert error_codes(done) == ["DIGEST_INVALID"]  # "the upload was finished as ..."
        for name, chunk in chunks.items():
            blob = http.get(f"/v2/{repo}/blobs/{sha256(chunk)}", follow_redirects=True)
            assert (blob.status_code, blob.content == chunk) == ((200, True) if name in winners else (404, False))


def test_finished_upload_cannot_be_appended_to_through_another_instance(
    client: httpx.Client, proxy_client: httpx.Client, repo: str
) -> None:
    """Instance A remembers an upload; instance B finishes it; A must not append to the sealed blob."""
    data = os.urandom(3000)
    location = patch(client, start(client, repo), data)
    finished = proxy_client.put(location, params={"digest": sha256(data)})
    assert finished.status_code == 201
    late = client.patch(location, content=b"appended after the end")
    assert late.status_code in (404, 416)
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}", follow_redirects=True).content == data


def test_wrong_digest_on_the_final_chunk_commits_nothing(client: httpx.Client, repo: str) -> None:
    location = patch(client, start(client, repo), b"a" * 100, **{"Content-Range": "0-99"})
    wrong = client.put(location, params={"digest": sha256(b"something else")}, content=b"b" * 50)
    assert wrong.status_code == 400
    assert error_codes(wrong) == ["DIGEST_INVALID"]
    assert client.get(location).headers["Range"] == "0-99"  # the upload is as it was: resumable
    right = client.put(location, params={"digest": sha256(b"a" * 100 + b"b" * 50)}, content=b"b" * 50)
    assert right.status_code == 201


def test_oversized_upload_id_is_not_a_server_error(client: httpx.Client, repo: str) -> None:
    response = client.get(f"/v2/{repo}/blobs/uploads/{'a' * 2000}")
    assert response.status_code in (400, 404)
    assert response.status_code != 500


def test_a_finished_upload_hands_out_no_state_that_could_change_it(client: httpx.Client, repo: str) -> None:
    """Found by review: a repeated closing PUT that lost to the finish used to answer 416 with a
    freshly signed state naming the sealed blob's version, and a DELETE or PATCH with that state
    then emptied or extended the linked blob."""
    data, more = os.urandom(3000), os.urandom(500)
    location = patch(client, start(client, repo), data)
    assert client.put(location, params={"digest": sha256(data)}).status_code == 201
    sha512_of_more = "sha512:" + hashlib.sha512(more).hexdigest()
    for digest in (sha256(data + more), sha512_of_more):
        again = client.put(location, params={"digest": digest}, content=more)
        assert again.status_code == 400 and error_codes(again) == ["DIGEST_INVALID"], again.text
        assert "Location" not in again.headers
    for method in ("GET", "PATCH", "DELETE"):
        assert client.request(method, location, content=more if method == "PATCH" else None).status_code == 404
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}", follow_redirects=True).content == data


def test_a_staged_upload_finishes_under_another_digest_algorithm(client: httpx.Client, repo: str) -> None:
    """The POST's running hash is SHA-256; a closing PUT with a SHA-512 digest commits the staged
    bytes and hashes what is stored (found by review: it was a 500)."""
    data = os.urandom(100_000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = patch(client, start(client, repo), data)
    wrong = client.put(location, params={"digest": "sha512:" + hashlib.sha512(b"other").hexdigest()})
    assert wrong.status_code == 400 and error_codes(wrong) == ["DIGEST_INVALID"]
    done = client.put(location, params={"digest": digest})  # the same state still finishes it
    assert done.status_code == 201, done.text
    assert client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).content == data


def test_chunks_too_large_to_stay_staged_are_committed_one_after_another(client: httpx.Client, repo: str,
                                                                         storage: StorageView) -> None:
    """Each chunk of more than four blocks is committed by its own PATCH, after the blocks
    already committed; a small last chunk stays staged until the closing PUT commits and seals it."""
    large = more_than_stays_staged(client, repo)
    chunks = [os.urandom(large), os.urandom(large), os.urandom(1000)]
    location, offset = start(client, repo), 0
    for chunk in chunks:
        location = patch(client, location, chunk, **{"Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        offset += len(chunk)
        committed = storage.blobs.get_blob_client(f"data/{upload_id_of(location)}").get_blob_properties().size
        assert committed == (offset if chunk is not chunks[-1] else offset - len(chunk))
    data = b"".join(chunks)
    assert client.put(location, params={"digest": sha256(data)}).status_code == 201
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}", follow_redirects=True).content == data


def test_an_altered_state_is_refused(client: httpx.Client, repo: str) -> None:
    """The state in the Location is signed: a client cannot move its offset, swap its running
    hash or revive an expired upload by editing it."""
    import base64
    import json

    location = patch(client, start(client, repo), b"a" * 100)
    query = urlsplit(location).query
    payload, mac = query.removeprefix("_state=").split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"n": 0}, {"x": fields["x"] + 86400}, {"o": "someone:else"}):
        edited = base64.urlsafe_b64encode(json.dumps({**fields, **change}).encode()).rstrip(b"=").decode()
        forged = location.replace(payload, edited)
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            response = client.request(method, forged, params={"digest": sha256(b"a" * 100)})
            assert response.status_code == 404, (change, method)
    assert client.put(location, params={"digest": sha256(b"a" * 100)}).status_code == 201
