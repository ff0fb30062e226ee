"""Many instances, one storage (issue 8): each scenario scripted against three Berth instances
on one Azurite, every request sent to the instance the scenario names (A, B, C).

Races run ROUNDS times, each round on fresh repositories. Assertions accept every outcome a
correct registry may give and nothing else: an acknowledged (2xx) write is never lost, and a
GET never answers 200 with bytes that do not hash to the digest asked for.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError

from registry.storage.uploads import MAX_PENDING
from tests.conftest import Server, StorageView
from tests.faults import FaultyStorage
from tests.helpers import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    image_manifest,
    push_blob,
    put_manifest,
    sha256,
)

ROUNDS = 20  # per race, as the issue asks
FAULT_ROUNDS = 5  # the storage-fault scenario hits its window nearly every time, and is slower
FAULT_DELAY = 0.4  # seconds the fault proxy holds each chunk of the faulty instance's table traffic
MiB = 1024 * 1024
T = TypeVar("T")


# --- shared helpers ------------------------------------------------------------------------

def new_repo() -> str:
    return f"many/{uuid.uuid4().hex[:12]}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class Instance(httpx.Client):
    """A client of one Berth instance, named (A, B, C) in failure messages."""

    def __init__(self, server: Server, name: str):
        super().__init__(base_url=server.url, timeout=120)
        self.name = name


@contextmanager
def connect(servers: Sequence[Server]) -> Iterator[list[Instance]]:
    """One client per server, already connected, so that racing requests start together."""
    with ExitStack() as stack:
        clients = [stack.enter_context(Instance(server, "ABC"[i % 3])) for i, server in enumerate(servers)]
        for client in clients:
            assert client.get("/v2/").status_code == 200
        yield clients


@pytest.fixture
def clients(instances: list[Server]) -> Iterator[list[Instance]]:
    """Clients of A, B and C, in that order."""
    with connect(instances) as opened:
        yield opened


def rotate(items: Sequence[T], shift: int) -> list[T]:
    """The roles A, B, C handed to the instances shifted by `shift` (so rounds vary who does what)."""
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def race(*calls: Callable[[], T]) -> list[T]:
    """Run the calls at the same moment, one thread each; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def upload_range(offset: int) -> str:
    """The Range header of an upload holding `offset` bytes."""
    return f"0-{max(offset - 1, 0)}"


def start(client: httpx.Client, repo: str) -> str:
    response = client.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == "0-0"
    return response.headers["Location"]


def patch(client: httpx.Client, location: str, data: object, offset: int | None = None) -> httpx.Response:
    """PATCH a chunk; with `offset`, as a chunked push does (Content-Range), else docker style."""
    headers = {"Content-Type": "application/octet-stream"}
    if offset is not None:
        assert isinstance(data, bytes)
        headers["Content-Range"] = f"{offset}-{offset + len(data) - 1}"
    return client.patch(location, content=data, headers=headers)


def push_monolithic(client: httpx.Client, repo: str, data: bytes, algorithm: str = "sha256") -> httpx.Response:
    return client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data, algorithm)}, content=data)


def get_blob(client: Instance, repo: str, digest: str) -> httpx.Response:
    """GET a blob, following the redirect; a 200 must carry exactly the bytes `digest` names."""
    response = client.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
    if response.status_code == 200:
        actual = digest_of(response.content, digest.split(":", 1)[0])
        assert actual == digest, f"GET {repo}@{digest} via {client.name} answered 200 with the bytes of {actual}"
    return response


def assert_readable(clients: Sequence[Instance], repo: str, digest: str, data: bytes) -> None:
    """HEAD and GET of the blob on every given instance: 200 and exactly `data`."""
    for client in clients:
        head = client.head(f"/v2/{repo}/blobs/{digest}")
        assert head.status_code == 200, f"HEAD {repo}@{digest} via {client.name}: {head.status_code}"
        assert head.headers["Content-Length"] == str(len(data))
        assert head.headers["Docker-Content-Digest"] == digest
        got = get_blob(client, repo, digest)
        assert got.status_code == 200, f"HEAD 200, then GET {repo}@{digest} via {client.name}: {got.status_code}"
        assert got.content == data


def assert_upload_at(clients: Sequence[Instance], location: str, offset: int) -> None:
    """Every instance reports the upload's true progress."""
    for client in clients:
        status = client.get(location)
        assert status.status_code == 204, f"status GET via {client.name}: {status.status_code} {status.text}"
        assert status.headers["Range"] == upload_range(offset), f"status GET via {client.name}"


def assert_one_manifest(clients: Sequence[Instance], repo: str, references: Sequence[str], body: bytes,
                        media_types: Sequence[str]) -> None:
    """GET and HEAD by every reference, on every instance, describe the same document the same way."""
    seen_types = set()
    for client in clients:
        for reference in references:
            for response in (client.get(f"/v2/{repo}/manifests/{reference}"),
                             client.head(f"/v2/{repo}/manifests/{reference}")):
                where = f"{response.request.method} {reference} via {client.name}"
                assert response.status_code == 200, f"{where}: {response.status_code}"
                assert response.headers["Docker-Content-Digest"] == sha256(body), where
                assert response.headers["Content-Length"] == str(len(body)), where
                if response.request.method == "GET":
                    assert response.content == body, where
                seen_types.add(response.headers["Content-Type"])
    assert len(seen_types) == 1, f"one manifest answered with several media types: {sorted(seen_types)}"
    assert seen_types <= set(media_types)


# --- 1. bytes of another repository --------------------------------------------------------

@pytest.mark.parametrize("shift", range(3))
def test_a_finished_upload_cannot_be_turned_against_bytes_another_repository_shares(
    clients: list[Instance], shift: int
) -> None:
    """POST on A, PATCH D on B, PUT on C; a victim pushes D (deduplicated onto that upload's
    bytes); then the attacker cancels on B and appends and finishes X on A. The victim still
    reads D, and so does any later push of D."""
    a, b, c = rotate(clients, shift)
    attacker, victim, later = new_repo(), new_repo(), new_repo()
    data, other = os.urandom(4096), os.urandom(4096)
    digest = digest_of(data)
    started = start(a, attacker)
    patched = patch(b, started, data)
    assert patched.status_code == 202
    assert c.put(patched.headers["Location"], params={"digest": digest}).status_code == 201
    assert push_monolithic(c, victim, data).status_code == 201
    # The attacker replays both states of the finished upload it was given, on every instance.
    for location in (started, patched.headers["Location"]):
        cancel = b.delete(location)
        append = patch(a, location, other)
        finish = a.put(location, params={"digest": digest_of(other)})
        assert_readable(clients, victim, digest, data)
        assert_readable(clients, attacker, digest, data)
        assert cancel.status_code == 404, "a finished upload was cancelled"
        assert append.status_code in (404, 416), "a finished upload was appended to"
        assert 400 <= finish.status_code < 500, "a finished upload was finished again with other bytes"
    assert push_monolithic(b, later, data).status_code == 201
    assert_readable(clients, later, digest, data)


@pytest.mark.parametrize("operation", ["cancel", "append", "finish"])
def test_a_finished_upload_is_closed_on_every_instance(clients: list[Instance], operation: str) -> None:
    """POST on A, PATCH on B, PUT on C: afterwards no instance cancels, appends to or re-finishes
    the upload (A and B both remember it open), and its blob keeps its bytes."""
    a, b, c = clients
    repo = new_repo()
    data, more = os.urandom(4096), os.urandom(100)
    patched = patch(b, start(a, repo), data)
    assert patched.status_code == 202
    location = patched.headers["Location"]
    assert c.put(location, params={"digest": digest_of(data)}).status_code == 201
    for client in (a, b, c):
        if operation == "cancel":
            response = client.delete(location)
            assert response.status_code == 404, f"cancelled via {client.name}"
            assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
        elif operation == "append":
            response = patch(client, location, more, offset=len(data))
            assert response.status_code in (404, 416), f"appended via {client.name}"
        else:
            response = client.put(location, params={"digest": digest_of(data + more)}, content=more,
                                  headers={"Content-Range": f"{len(data)}-{len(data) + len(more) - 1}"})
            assert 400 <= response.status_code < 500, f"finished again via {client.name}"
        assert client.get(location).status_code == 404, f"status GET via {client.name}"
    assert_readable(clients, repo, digest_of(data), data)
    assert get_blob(a, repo, digest_of(data + more)).status_code == 404


def stored_copies(storage: StorageView, data: bytes) -> list[str]:
    """Names of the blobs holding `data`, wherever the layout puts them (found by size, then bytes)."""
    candidates = [blob.name for blob in storage.blobs.list_blobs() if blob.size == len(data)]
    return [name for name in candidates if storage.blobs.download_blob(name).readall() == data]


@pytest.mark.parametrize("damage", ["deleted", "replaced"])
def test_a_push_is_not_deduplicated_onto_bytes_that_are_gone(
    clients: list[Instance], storage: StorageView, damage: str
) -> None:
    """The bytes a digest's index names are deleted, or replaced by other bytes (what scenario 1
    did through the API; here done directly in storage). A new push of that digest on another
    instance must check the target, not trust the index: 201 and readable."""
    a, b, c = clients
    first, second = new_repo(), new_repo()
    data = os.urandom(5000 + int.from_bytes(os.urandom(2)))  # an unusual size, to find its copy
    digest = digest_of(data)
    assert push_monolithic(a, first, data).status_code == 201
    stored = stored_copies(storage, data)
    assert stored
    for name in stored:
        if damage == "deleted":
            storage.blobs.delete_blob(name)
        else:
            storage.blobs.upload_blob(name, os.urandom(len(data) // 2), overwrite=True)
    assert push_monolithic(b, second, data).status_code == 201
    assert_readable(clients, second, digest, data)
    if damage == "deleted":
        get_blob(c, first, digest)  # 404 or repaired; never other bytes


def test_a_retried_finish_never_drops_bytes_a_mount_already_shares(clients: list[Instance]) -> None:
    """The closing PUT carries the body and is slow; meanwhile the same bytes are pushed elsewhere.
    Then another repository mounts the blob from the first, and the PUT is repeated (a client
    retry). The mounted blob stays readable, and the finished upload cannot be turned into other
    bytes under the same digest (found by review: the retry used to delete the linked copy)."""
    a, b, c = clients
    repo, elsewhere, victim = new_repo(), new_repo(), new_repo()
    data = os.urandom(1_000_000)
    digest = digest_of(data)
    location = start(a, repo)
    pushed_elsewhere = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield data[:1000]
        pushed_elsewhere.wait(30)
        yield data[1000:]

    def push_elsewhere() -> int:
        time.sleep(0.5)
        status = push_monolithic(c, elsewhere, data).status_code
        pushed_elsewhere.set()
        return status

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(push_elsewhere)
        done = b.put(location, params={"digest": digest}, content=slow_body(),
                     headers={"Content-Length": str(len(data))})
        assert other.result() == 201
    assert done.status_code == 201, done.text
    mounted = c.post(f"/v2/{victim}/blobs/uploads/", params={"mount": digest, "from": repo})
    assert mounted.status_code == 201, mounted.text
    again = a.put(location, params={"digest": digest})
    assert again.status_code == 201, again.text  # a repeated finish completes again
    for where in (repo, victim, elsewhere):
        assert_readable(clients, where, digest, data)
    other_bytes = b"not the layer that was pinned\n" * 100
    assert patch(b, location, other_bytes).status_code == 404
    assert c.get(location).status_code == 404
    refinished = c.put(location, params={"digest": digest_of(other_bytes)})
    assert refinished.status_code in (400, 404), refinished.text
    for where in (repo, victim, elsewhere):
        assert_readable(clients, where, digest, data)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_closing_puts_at_once_both_succeed(clients: list[Instance], round_: int) -> None:
    """A client that sends its closing PUT twice (a retry racing the first) gets 201 twice."""
    a, b, c = rotate(clients, round_)
    repo = new_repo()
    data = os.urandom(50_000)
    patched = patch(a, start(a, repo), data)
    assert patched.status_code == 202
    location = patched.headers["Location"]
    first, second = race(lambda: b.put(location, params={"digest": digest_of(data)}),
                         lambda: c.put(location, params={"digest": digest_of(data)}))
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert_readable(clients, repo, digest_of(data), data)


def test_a_patch_to_an_upload_that_is_not_the_callers_stores_nothing(clients: list[Instance],
                                                                      storage: StorageView) -> None:
    """Bytes sent to an upload id no session knows are refused before any of them is staged."""
    a, _, _ = clients
    repo = new_repo()
    made_up = uuid.uuid4().hex
    response = patch(a, f"/v2/{repo}/blobs/uploads/{made_up}", os.urandom(200_000))
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
    try:
        _, uncommitted = storage.blobs.get_blob_client(f"data/{made_up}").get_block_list("uncommitted")
    except ResourceNotFoundError:
        uncommitted = []
    assert uncommitted == []


# --- 2. the owner's closing PUT racing its own DELETE --------------------------------------

@pytest.mark.parametrize("round_", range(ROUNDS))
def test_closing_put_racing_a_cancel_never_acknowledges_an_unreadable_blob(
    clients: list[Instance], round_: int
) -> None:
    """PUT ?digest= on one instance and DELETE of the same upload on another, at once: either
    the PUT is 201 and the blob readable, or the PUT fails (4xx) and the blob is not visible.
    Later pushes of that digest, here and elsewhere, are readable."""
    finisher, canceller, other = rotate(clients, round_)
    repo, elsewhere = new_repo(), new_repo()
    data = os.urandom(64 * 1024)
    digest = digest_of(data)
    location = start(clients[0], repo)  # A starts the upload and sends its bytes
    assert patch(clients[0], location, data).status_code == 202
    finished, cancelled = race(lambda: finisher.put(location, params={"digest": digest}),
                               lambda: canceller.delete(location))
    if finished.status_code == 201:
        assert_readable(clients, repo, digest, data)
    elif finished.status_code < 500:
        for client in clients:
            assert client.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
            assert get_blob(client, repo, digest).status_code == 404
    assert push_monolithic(other, repo, data).status_code == 201
    assert_readable(clients, repo, digest, data)
    assert push_monolithic(canceller, elsewhere, data).status_code == 201
    assert_readable(clients, elsewhere, digest, data)
    assert finished.status_code == 201 or 400 <= finished.status_code < 500, f"PUT: {finished.text}"
    assert cancelled.status_code in (204, 404), f"DELETE: {cancelled.text}"


# --- 3. docker/containerd and chunked pushes across instances -------------------------------

@pytest.mark.parametrize("shift", range(3))
@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_docker_style_push_across_instances(clients: list[Instance], shift: int, transfer: str) -> None:
    """POST on A, one PATCH with the whole body (no Content-Range) on B, empty PUT ?digest= on A."""
    a, b, _ = rotate(clients, shift)
    repo = new_repo()
    data = os.urandom(300 * 1024)
    location = start(a, repo)
    assert_upload_at(clients, location, 0)
    body: object = data if transfer == "content-length" else (data[i:i + 65536] for i in range(0, len(data), 65536))
    response = patch(b, location, body)
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == upload_range(len(data))
    assert_upload_at(clients, response.headers["Location"], len(data))
    done = a.put(response.headers["Location"], params={"digest": digest_of(data)})
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == digest_of(data)
    assert_readable(clients, repo, digest_of(data), data)


@pytest.mark.parametrize("last_chunk_in_put", [False, True])
def test_chunked_push_across_instances(clients: list[Instance], last_chunk_in_put: bool) -> None:
    """PATCH with Content-Range on A, B, A (each 202 with the right Range), PUT on C."""
    a, b, c = clients
    repo = new_repo()
    chunks = [os.urandom(size) for size in (70_000, 123_457, 50_001, 9_999)]
    data = b"".join(chunks)
    location = start(a, repo)
    offset = 0
    for client, chunk in zip((a, b, a), chunks[:3], strict=True):
        response = patch(client, location, chunk, offset)
        assert response.status_code == 202, f"PATCH at {offset} via {client.name}: {response.status_code}"
        offset += len(chunk)
        assert response.headers["Range"] == upload_range(offset)
        location = response.headers["Location"]
        assert_upload_at(clients, location, offset)
    if last_chunk_in_put:
        headers = {"Content-Range": f"{offset}-{len(data) - 1}"}
        done = c.put(location, params={"digest": digest_of(data)}, content=chunks[3], headers=headers)
    else:
        response = patch(c, location, chunks[3], offset)
        assert response.status_code == 202
        done = c.put(response.headers["Location"], params={"digest": digest_of(data)})
    assert done.status_code == 201, done.text
    assert_readable(clients, repo, digest_of(data), data)


@pytest.mark.parametrize("meanwhile", ["another chunk", "cancel", "finish"])
def test_finishing_where_the_upload_was_last_seen_uses_what_storage_says(clients: list[Instance],
                                                                          meanwhile: str) -> None:
    """A takes a chunk; B then moves the upload on (one more chunk, a cancel, or the finish);
    the empty closing PUT comes back to A, which took the upload's previous step. A state the
    client sends that is behind storage never finishes the upload with other bytes."""
    a, b, _ = clients
    repo = new_repo()
    first, second = os.urandom(40_000), os.urandom(30_000)
    patched = patch(a, start(a, repo), first, 0)
    assert patched.status_code == 202
    location = patched.headers["Location"]
    data = first
    if meanwhile == "another chunk":
        moved = patch(b, location, second, len(first))
        assert moved.status_code == 202
        stale = a.put(location, params={"digest": digest_of(first + second)})  # the state before B's chunk
        assert 400 <= stale.status_code < 500, stale.text
        location, data = moved.headers["Location"], first + second
    elif meanwhile == "cancel":
        assert b.delete(location).status_code == 204
    else:
        assert b.put(location, params={"digest": digest_of(first)}).status_code == 201
    done = a.put(location, params={"digest": digest_of(data)})
    if meanwhile == "cancel":
        assert done.status_code == 404, done.text
        assert error_codes(done) == ["BLOB_UPLOAD_UNKNOWN"]
        assert a.head(f"/v2/{repo}/blobs/{digest_of(data)}").status_code == 404
        return
    assert done.status_code == 201, done.text
    assert_readable(clients, repo, digest_of(data), data)
    # And a digest that is really wrong is refused, whoever remembers what.
    patched = patch(a, start(a, repo), first, 0)
    assert patched.status_code == 202
    location = patched.headers["Location"]
    wrong = a.put(location, params={"digest": digest_of(second)})
    assert wrong.status_code == 400 and error_codes(wrong) == ["DIGEST_INVALID"]
    assert_upload_at(clients, location, len(first))


# --- 4. manifest DELETE racing a tag push ---------------------------------------------------

@pytest.mark.parametrize("round_", range(ROUNDS))
def test_manifest_delete_racing_a_retag_keeps_the_acknowledged_tag(clients: list[Instance], round_: int) -> None:
    """`latest` is M1; at once, DELETE M1 by digest on one instance and PUT `latest` -> M2 on
    another. Both succeed, and afterwards `latest` serves M2 on every instance."""
    deleter, tagger, setup = rotate(clients, round_)
    repo = new_repo()
    first, second = image_manifest(setup, repo), image_manifest(setup, repo)
    assert put_manifest(setup, repo, "latest", first).status_code == 201
    deleted, tagged = race(lambda: deleter.delete(f"/v2/{repo}/manifests/{sha256(first)}"),
                           lambda: put_manifest(tagger, repo, "latest", second))
    assert deleted.status_code == 202, deleted.text
    assert tagged.status_code == 201, tagged.text
    for client in clients:
        latest = client.get(f"/v2/{repo}/manifests/latest")
        assert latest.status_code == 200, f"the acknowledged tag is gone ({client.name})"
        assert latest.headers["Docker-Content-Digest"] == sha256(second)
        assert latest.content == second
        assert client.get(f"/v2/{repo}/manifests/{sha256(first)}").status_code == 404
    assert_one_manifest(clients, repo, ["latest", sha256(second)], second, [OCI_MANIFEST])


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_manifest_delete_racing_a_repush_leaves_no_tag_on_a_deleted_manifest(
    clients: list[Instance], round_: int
) -> None:
    """M1 exists (tagged `latest` in even rounds, untagged in odd ones); at once, DELETE M1 on
    one instance and PUT `latest` -> M1 again on another. Afterwards `latest` and M1 exist
    together (DELETE came first) or are both gone (PUT came first), the same on every instance."""
    deleter, pusher, setup = rotate(clients, round_)
    repo = new_repo()
    body = image_manifest(setup, repo)
    digest = sha256(body)
    assert put_manifest(setup, repo, "latest" if round_ % 2 == 0 else digest, body).status_code == 201
    deleted, pushed = race(lambda: deleter.delete(f"/v2/{repo}/manifests/{digest}"),
                           lambda: put_manifest(pusher, repo, "latest", body))
    assert deleted.status_code == 202, deleted.text
    assert pushed.status_code == 201, pushed.text
    outcomes = set()
    for client in clients:
        by_tag = client.get(f"/v2/{repo}/manifests/latest").status_code
        by_digest = client.get(f"/v2/{repo}/manifests/{digest}").status_code
        assert (by_tag, by_digest) in ((200, 200), (404, 404)), (
            f"via {client.name}: latest -> {by_tag}, its manifest by digest -> {by_digest}"
        )
        outcomes.add(by_tag)
    assert len(outcomes) == 1, "instances disagree"
    if outcomes == {200}:
        assert_one_manifest(clients, repo, ["latest", digest], body, [OCI_MANIFEST])


# --- 5. one media type per manifest ---------------------------------------------------------

def manifest_without_media_type(client: httpx.Client, repo: str) -> bytes:
    """An image manifest with no `mediaType` field (its blobs pushed): its Content-Type decides."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layer = os.urandom(1024)
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    document = {"schemaVersion": 2, "config": descriptor(OCI_CONFIG, config), "layers": [descriptor(OCI_LAYER, layer)]}
    return json.dumps(document).encode()


@pytest.mark.parametrize("first", ["tag", "digest"])
@pytest.mark.parametrize("media_types", [(OCI_MANIFEST, DOCKER_MANIFEST), (DOCKER_MANIFEST, OCI_MANIFEST)],
                         ids=["oci-then-docker", "docker-then-oci"])
def test_a_manifest_has_one_media_type_by_tag_and_by_digest(
    clients: list[Instance], first: str, media_types: tuple[str, str]
) -> None:
    """A manifest without `mediaType` pushed by tag on A with one Content-Type and by digest on B
    with another: GET and HEAD by tag and by digest agree (type, bytes, digest, length)."""
    a, b, c = clients
    repo = new_repo()
    body = manifest_without_media_type(c, repo)
    references = ["v1", sha256(body)] if first == "tag" else [sha256(body), "v1"]
    for client, reference, media_type in zip((a, b), references, media_types, strict=True):
        response = put_manifest(client, repo, reference, body, media_type)
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == sha256(body)
    assert_one_manifest(clients, repo, ["v1", sha256(body)], body, media_types)


# --- 6. finishing a large upload on another instance ----------------------------------------

@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("roles", ["AAB", "ABA"], ids=["patch-on-A-put-on-B", "patch-on-B-put-on-A"])
def test_a_large_upload_finishes_on_another_instance(clients: list[Instance], algorithm: str, roles: str) -> None:
    """Docker style: POST, one PATCH with the whole body and an empty PUT ?digest=<algorithm>:...,
    the PUT on another instance than the PATCH; the body too large to stay staged, so the PATCH
    commits it and the PUT seals what another instance committed."""
    poster, patcher, finisher = (clients["ABC".index(role)] for role in roles)
    repo = new_repo()
    block = int(poster.post(f"/v2/{repo}/blobs/uploads/").headers["OCI-Chunk-Min-Length"])
    data = os.urandom(MAX_PENDING * block + MiB)
    digest = digest_of(data, algorithm)
    location = start(poster, repo)
    response = patch(patcher, location, data)
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == upload_range(len(data))
    done = finisher.put(response.headers["Location"], params={"digest": digest})
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == digest
    for client in clients:
        head = client.head(f"/v2/{repo}/blobs/{digest}")
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert_readable([clients[2]], repo, digest, data)


# --- 7. mixed load, spread round-robin -------------------------------------------------------

class RoundRobin:
    """Sends each request to the next instance in turn, across all threads, like a front end;
    collects every answer that is not the one expected."""

    def __init__(self, instances: list[Server]):
        self._instances = instances
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.unexpected: list[str] = []

    @contextmanager
    def session(self) -> Iterator[Callable[..., httpx.Response]]:
        """A sender for one thread: send(expected_status, method, url, **kwargs)."""
        with connect(self._instances) as clients:
            def send(expected: int, method: str, url: str, **kwargs: object) -> httpx.Response:
                with self._lock:
                    client = clients[next(self._turn) % len(clients)]
                response = client.request(method, url, **kwargs)  # type: ignore[arg-type]
                if response.status_code != expected:
                    with self._lock:
                        self.unexpected.append(f"{method} via {client.name}: {response.status_code} "
                                               f"(expected {expected}) {response.text[:200]}")
                return response

            yield send


def push_in_style(send: Callable[..., httpx.Response], style: str, repo: str, data: bytes) -> None:
    """Push `data` the way a client of that style does, stopping at the first unexpected answer."""
    digest = digest_of(data)
    uploads = f"/v2/{repo}/blobs/uploads/"
    if style == "monolithic":
        send(201, "POST", uploads, params={"digest": digest}, content=data)
        return
    response = send(202, "POST", uploads)
    if response.status_code != 202:
        return
    location, body = response.headers["Location"], b""
    if style == "chunked":
        third = len(data) // 3
        for begin, end in ((0, third), (third, 2 * third), (2 * third, len(data))):
            headers = {"Content-Range": f"{begin}-{end - 1}", "Content-Type": "application/octet-stream"}
            response = send(202, "PATCH", location, content=data[begin:end], headers=headers)
            if response.status_code != 202:
                return
            assert response.headers["Range"] == upload_range(end)
            location = response.headers["Location"]
    elif style == "docker":
        response = send(202, "PATCH", location, content=data)
        if response.status_code != 202:
            return
        location = response.headers["Location"]
    else:  # POST, then the whole body in the PUT
        body = data
    send(201, "PUT", location, params={"digest": digest}, content=body)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_mixed_load_spread_round_robin(instances: list[Server], round_: int) -> None:
    """Six threads push chunked (3 chunks), docker-style, POST+PUT and monolithic uploads, every
    other push the SAME content as the other threads' at the same moment into their own
    repositories; each request goes to the next instance. Every request gets its expected
    status, and every blob reads back."""
    workers, pushes = 6, 3
    styles = ["chunked", "docker", "post-put", "monolithic"]
    shared = [os.urandom(48 * 1024 + i) for i in range(pushes)]
    spread = RoundRobin(instances)
    barrier = threading.Barrier(workers)

    def work(worker: int) -> list[tuple[str, bytes]]:
        pushed = []
        with spread.session() as send:
            for push in range(pushes):
                data = shared[push] if push % 2 == 0 else os.urandom(32 * 1024 + worker)
                repo = new_repo()
                barrier.wait()
                push_in_style(send, styles[(worker + push) % len(styles)], repo, data)
                pushed.append((repo, data))
        return pushed

    with ThreadPoolExecutor(workers) as pool:
        pushed = [push for of_worker in pool.map(work, range(workers)) for push in of_worker]
    assert not spread.unexpected, "\n".join(spread.unexpected)
    with spread.session() as send:
        for repo, data in pushed:
            send(200, "HEAD", f"/v2/{repo}/blobs/{digest_of(data)}")
            got = send(200, "GET", f"/v2/{repo}/blobs/{digest_of(data)}", follow_redirects=True)
            if got.status_code == 200:
                assert got.content == data, f"GET {repo}@{digest_of(data)} answered 200 with other bytes"
    assert not spread.unexpected, "\n".join(spread.unexpected)


# --- 8. identical monolithic pushes ---------------------------------------------------------

@pytest.mark.parametrize("round_", range(ROUNDS))
def test_identical_monolithic_pushes_from_several_instances(instances: list[Server], round_: int) -> None:
    """Nine monolithic POST ?digest= pushes of the same bytes into nine repositories, three per
    instance, at once (sha256 digests in even rounds, sha512 in odd ones): all 201 and all
    readable, and so is a later push of the same digest. (A finish failing half-way: next test.)"""
    algorithm = "sha256" if round_ % 2 == 0 else "sha512"
    data = os.urandom(128 * 1024)
    digest = digest_of(data, algorithm)
    repos = [new_repo() for _ in range(9)]
    with connect(instances * 3) as pushers, connect(instances) as readers:
        responses = race(*[lambda client=client, repo=repo: push_monolithic(client, repo, data, algorithm)
                           for client, repo in zip(pushers, repos, strict=True)])
        assert [response.status_code for response in responses] == [201] * len(repos), [
            response.text for response in responses
        ]
        for i, repo in enumerate(repos):
            assert_readable([readers[i % 3]], repo, digest, data)
        later = new_repo()
        assert push_monolithic(readers[round_ % 3], later, data, algorithm).status_code == 201
        assert_readable(readers, later, digest, data)


@pytest.mark.parametrize("round_", range(FAULT_ROUNDS))
def test_a_finish_failing_half_way_never_deletes_bytes_another_push_linked(
    clients: list[Instance], faulty_server: Server, faulty_storage: FaultyStorage, round_: int
) -> None:
    """A monolithic POST ?digest= on instance F, whose storage traffic passes the fault proxy,
    loses Table Storage after its finish has written (its blob link shows on A) but before it
    hears back; in between, B pushes the same bytes into another repository. B's push reads
    back; F's push, whatever it answered, left nothing visible or a readable blob."""
    a, b, c = clients
    first, second, third = new_repo(), new_repo(), new_repo()
    data = os.urandom(64 * 1024)
    digest = digest_of(data)
    table, usual_delay = faulty_storage.table, faulty_storage.table.delay
    with Instance(faulty_server, "F") as f, ThreadPoolExecutor(1) as pool:
        table.delay = FAULT_DELAY  # each of F's table calls takes twice this: time to act in between
        table.set_mode("slow")
        try:
            pending = pool.submit(push_monolithic, f, first, data)
            wait_until(lambda: pending.done() or a.head(f"/v2/{first}/blobs/{digest}").status_code == 200)
            pushed = push_monolithic(b, second, data)
            table.set_mode("cut")
            finished = pending.result(timeout=200)
        finally:
            table.set_mode("pass")
            table.delay = usual_delay
    assert pushed.status_code == 201, pushed.text
    assert_readable(clients, second, digest, data)
    if finished.status_code == 201:
        assert_readable(clients, first, digest, data)
    else:  # not acknowledged: nothing visible, or a complete blob
        for client in clients:
            if client.head(f"/v2/{first}/blobs/{digest}").status_code == 200:
                assert get_blob(client, first, digest).status_code == 200, f"HEAD 200, GET not, via {client.name}"
            else:
                assert get_blob(client, first, digest).status_code == 404
    assert push_monolithic(c, third, data).status_code == 201
    assert_readable(clients, third, digest, data)
    assert finished.status_code in (201, 503), f"F answered {finished.status_code}: {finished.text}"
