"""Storage trouble (stalled, cut, slow) is answered as 503 + Retry-After within a bounded time,
Berth recovers without a restart, and nothing acknowledged is lost.

Berth runs with BERTH_STORAGE_TIMEOUT_SECONDS=2 on storage reached through `faulty_storage`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx
import pytest

from registry.azurite import Azurite
from tests.conftest import Server, start_server, stop_server
from tests.faults import FaultyStorage, Mode
from tests.helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, error_codes, push_blob, put_manifest, sha256

HANG_BOUND = 30.0  # stalled storage: a check that nothing hangs, not a speed target
PROMPT_BOUND = 10.0  # cut storage: connections fail at once, so must the answer


@pytest.fixture(autouse=True)
def healthy_storage(faulty_storage: FaultyStorage, faulty_server: Server) -> Iterator[None]:
    faulty_storage.set_mode("pass")
    # After the previous test's fault the instance may answer 503 for a moment (connections it
    # held through a stall time out): as test_recovers_without_restart allows, a client waits
    # for that. Each test starts from a registry that reports itself ready.
    deadline = time.monotonic() + HANG_BOUND
    while httpx.get(f"{faulty_server.url}/health/ready", timeout=HANG_BOUND).status_code != 200:
        assert time.monotonic() < deadline, "the instance did not become ready again after the last fault"
        time.sleep(0.5)
    yield
    faulty_storage.set_mode("pass")


@pytest.fixture
def http(faulty_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faulty_server.url, timeout=HANG_BOUND) as client:
        yield client


@dataclass
class Pushed:
    repo: str
    tag: str
    digest: str
    manifest: bytes
    blobs: dict[str, bytes]


def push_known_image(http: httpx.Client, repo: str, tag: str, layer_sizes: tuple[int, ...] = (40_000,)) -> Pushed:
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layers = [os.urandom(size) for size in layer_sizes]
    for blob in (config, *layers):
        push_blob(http, repo, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }).encode()
    response = put_manifest(http, repo, tag, manifest)
    assert response.status_code == 201, response.text
    return Pushed(repo, tag, sha256(manifest), manifest, {sha256(blob): blob for blob in (config, *layers)})


def assert_readable(http: httpx.Client, repo: str, manifests: dict[str, bytes], blobs: dict[str, bytes]) -> None:
    """Every manifest (by reference) and blob reads back byte-identical."""
    for reference, body in manifests.items():
        response = http.get(f"/v2/{repo}/manifests/{reference}")
        assert response.status_code == 200 and response.content == body, f"manifest {reference}: {response.text}"
    for digest, data in blobs.items():
        response = http.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        assert response.status_code == 200 and response.content == data, f"blob {digest}: {response.status_code}"


def start_upload(http: httpx.Client, repo: str) -> str:
    response = http.post(f"/v2/{repo}/blobs/uploads/")
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def within(bound: float, what: str, request: Callable[[float], httpx.Response]) -> httpx.Response:
    """The answer to request(timeout), which must come within `bound` seconds."""
    began = time.monotonic()
    try:
        response = request(bound)
    except httpx.TimeoutException:
        pytest.fail(f"{what}: no answer within {bound:.0f} s (a hang)")
    elapsed = time.monotonic() - began
    assert elapsed <= bound, f"{what}: answered after {elapsed:.1f} s"
    return response


def assert_unavailable(what: str, response: httpx.Response) -> None:
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers.get("Retry-After", "").isdigit(), f"{what}: Retry-After {response.headers}"
    if response.request.method != "HEAD":
        assert error_codes(response) == ["UNAVAILABLE"], f"{what}: {response.text[:300]}"


def storage_requests(http: httpx.Client, image: Pushed, upload: str) -> dict[str, Callable[[float], httpx.Response]]:
    """Requests only storage can answer, by name."""
    repo, layer = image.repo, next(iter(image.blobs))
    return {
        "GET manifest by tag": lambda timeout: http.get(f"/v2/{repo}/manifests/{image.tag}", timeout=timeout),
        # Storage down is no proof that a tag does not exist: never a 404.
        "GET manifest of an unknown tag": lambda timeout: http.get(f"/v2/{repo}/manifests/nope", timeout=timeout),
        "HEAD blob": lambda timeout: http.head(f"/v2/{repo}/blobs/{layer}", timeout=timeout),
        "POST upload": lambda timeout: http.post(f"/v2/{repo}/blobs/uploads/", timeout=timeout),
        "PATCH upload": lambda timeout: http.patch(upload, content=os.urandom(10_000), timeout=timeout,
                                                   headers={"Content-Type": "application/octet-stream"}),
    }


@pytest.mark.parametrize(("mode", "bound"), [("stall", HANG_BOUND), ("cut", PROMPT_BOUND)])
def test_storage_trouble_is_503_with_retry_after(mode: Mode, bound: float, faulty_storage: FaultyStorage,
                                                 http: httpx.Client, repo: str) -> None:
    image = push_known_image(http, repo, "v1")
    upload = start_upload(http, repo)
    faulty_storage.set_mode(mode)
    for what, request in storage_requests(http, image, upload).items():
        assert_unavailable(what, within(bound, what, request))
    def get(path: str) -> httpx.Response:
        return within(bound, f"GET {path}", lambda timeout: http.get(path, timeout=timeout))

    assert get("/health/ready").status_code == 503
    assert get("/health/live").status_code == 200
    assert get("/v2/").status_code in (200, 503)  # may answer without storage; must answer, though


@pytest.mark.parametrize("mode", ["stall", "cut"])
def test_recovers_without_restart(mode: Mode, faulty_storage: FaultyStorage, faulty_server: Server,
                                  http: httpx.Client, repo: str) -> None:
    image = push_known_image(http, repo, "v1")
    upload = start_upload(http, repo)
    faulty_storage.set_mode(mode)
    requests = storage_requests(http, image, upload)
    for what in ("GET manifest by tag", "PATCH upload"):
        try:
            requests[what](5)  # Berth meets the trouble; what it answers is the test above's business
        except httpx.TimeoutException:
            pass
    faulty_storage.set_mode("pass")
    assert faulty_server.process.poll() is None, "Berth exited"
    # A client honouring Retry-After gets through once storage is back.
    deadline = time.monotonic() + HANG_BOUND
    while (response := http.get(f"/v2/{repo}/manifests/{image.tag}")).status_code == 503:
        assert time.monotonic() < deadline, "still 503 long after storage came back"
        time.sleep(min(float(response.headers.get("Retry-After", "1")), 2))
    assert response.status_code == 200 and response.content == image.manifest, response.text
    assert http.head(f"/v2/{repo}/blobs/{next(iter(image.blobs))}").status_code == 200
    data = os.urandom(50_000)
    location = start_upload(http, repo)
    patched = http.patch(location, content=data, headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202, patched.text
    finished = http.put(patched.headers["Location"], params={"digest": sha256(data)})
    assert finished.status_code == 201, finished.text
    assert_readable(http, repo, {image.tag: image.manifest, image.digest: image.manifest},
                    {**image.blobs, sha256(data): data})
    assert http.get("/health/ready").status_code == 200


def test_slow_storage_still_serves_push_and_pull(faulty_storage: FaultyStorage, faulty_server: Server,
                                                 repo: str) -> None:
    faulty_storage.set_mode("slow")
    with httpx.Client(base_url=faulty_server.url, timeout=120) as http:
        image = push_known_image(http, repo, "slow", layer_sizes=(20_000, 30_000))
        data = os.urandom(60_000)
        location = start_upload(http, repo)
        for begin, end in ((0, 25_000), (25_000, 60_000)):
            response = http.patch(location, content=data[begin:end],
                                  headers={"Content-Range": f"{begin}-{end - 1}",
                                           "Content-Type": "application/octet-stream"})
            assert response.status_code == 202, response.text
            location = response.headers["Location"]
        finished = http.put(location, params={"digest": sha256(data)})
        assert finished.status_code == 201, finished.text
        assert_readable(http, repo, {image.tag: image.manifest}, {**image.blobs, sha256(data): data})


@dataclass
class Outcome:
    status: int | None  # None: no answer at all
    answered_at: float


def test_no_acknowledged_push_is_lost_to_a_stall(faulty_storage: FaultyStorage, faulty_server: Server,
                                                repo: str, http: httpx.Client) -> None:
    before = push_known_image(http, repo, "before")
    manifests = {"before": before.manifest, before.digest: before.manifest}  # every acknowledged push
    blobs = dict(before.blobs)
    config = json.dumps({"architecture": "arm64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layer = os.urandom(256 * 1024)
    upload = start_upload(http, repo)

    # In flight when storage stalls: a streamed PATCH paused half-way, a monolithic blob push
    # and a manifest push (a new tag on the first image).
    half_sent, stalled = threading.Event(), threading.Event()

    def paused_body() -> Iterator[bytes]:
        yield layer[: len(layer) // 2]
        half_sent.set()
        stalled.wait(HANG_BOUND)
        yield layer[len(layer) // 2:]

    def attempt(request: Callable[[httpx.Client], httpx.Response]) -> Outcome:
        with httpx.Client(base_url=faulty_server.url, timeout=HANG_BOUND + 10) as own:
            try:
                status: int | None = request(own).status_code
            except httpx.TransportError:
                status = None
        return Outcome(status, time.monotonic())

    def after_stall(request: Callable[[httpx.Client], httpx.Response]) -> Callable[[httpx.Client], httpx.Response]:
        def delayed(own: httpx.Client) -> httpx.Response:
            stalled.wait(HANG_BOUND)
            return request(own)
        return delayed

    in_flight = {
        "PATCH (streamed)": lambda own: own.patch(upload, content=paused_body(),
                                                  headers={"Content-Type": "application/octet-stream"}),
        "POST ?digest= (config)": after_stall(lambda own: own.post(f"/v2/{repo}/blobs/uploads/",
                                                                   params={"digest": sha256(config)}, content=config)),
        "PUT manifest :during": after_stall(lambda own: put_manifest(own, repo, "during", before.manifest)),
    }
    with ThreadPoolExecutor(len(in_flight)) as pool:
        futures = {what: pool.submit(attempt, request) for what, request in in_flight.items()}
        assert half_sent.wait(HANG_BOUND), "the PATCH did not start"
        faulty_storage.set_mode("stall")
        stalled.set()
        # Hold the stall until every request in flight has answered, or for the hang bound.
        wait(futures.values(), timeout=HANG_BOUND)
        faulty_storage.set_mode("pass")
        lifted = time.monotonic()
        outcomes = {what: future.result(timeout=HANG_BOUND + 20) for what, future in futures.items()}

    # What the client was told it has, it has; then it retries what failed, as a client would.
    patched = outcomes["PATCH (streamed)"].status == 202
    if outcomes["POST ?digest= (config)"].status == 201:
        blobs[sha256(config)] = config
    if outcomes["PUT manifest :during"].status == 201:
        manifests["during"] = before.manifest
    assert_readable(http, repo, manifests, blobs)
    if patched:
        finished = http.put(upload, params={"digest": sha256(layer)})
    else:
        finished = http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(layer)}, content=layer)
    assert finished.status_code == 201, finished.text
    push_blob(http, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }).encode()
    assert put_manifest(http, repo, "after", manifest).status_code == 201
    assert put_manifest(http, repo, "during", before.manifest).status_code == 201
    assert_readable(http, repo, {**manifests, "after": manifest, "during": before.manifest},
                    {**blobs, sha256(config): config, sha256(layer): layer})

    # And storage trouble was answered while it lasted: a success or a 503, never a hang or a 500.
    for what, outcome in outcomes.items():
        assert outcome.answered_at < lifted, f"{what}: no answer while storage stalled ({outcome.status} after)"
        assert outcome.status in (201, 202, 503), f"{what}: {outcome.status}"


@pytest.fixture(scope="module")
def faulty_proxy_server(faulty_storage: FaultyStorage, azurite: Azurite,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Like `faulty_server`, but streaming blob bytes itself (proxy delivery)."""
    instance = start_server(azurite, tmp_path_factory.mktemp("faulty-proxy"),
                            BERTH_STORAGE_CONNECTION_STRING=faulty_storage.connection_string,
                            BERTH_STORAGE_TIMEOUT_SECONDS="2", BERTH_BLOB_DELIVERY="proxy")
    yield instance
    stop_server(instance)


@pytest.mark.parametrize("mode", ["stall", "cut"])
def test_proxy_delivery_answers_503_not_a_cut_short_200(mode: Mode, faulty_storage: FaultyStorage,
                                                        faulty_proxy_server: Server, repo: str) -> None:
    """Blob storage down while its index (tables) answers: the blob GET is a 503 before any byte,
    never a 200 whose body breaks off (found by review)."""
    with httpx.Client(base_url=faulty_proxy_server.url, timeout=HANG_BOUND) as http:
        data = os.urandom(300_000)
        digest = push_blob(http, repo, data)
        faulty_storage.blob.set_mode(mode)
        response = within(HANG_BOUND, "GET blob", lambda timeout: http.get(f"/v2/{repo}/blobs/{digest}",
                                                                            timeout=timeout))
        assert_unavailable("GET blob (proxy delivery)", response)
        faulty_storage.blob.set_mode("pass")
        again = http.get(f"/v2/{repo}/blobs/{digest}")
        assert again.status_code == 200 and again.content == data
