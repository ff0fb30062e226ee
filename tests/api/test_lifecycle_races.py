"""Interleavings across instances that could lose acknowledged content or bypass a lock
(found by a review of the garbage collector and the locks), and a 500 from a PATCH body.

Driven deterministically: in-process stores (`BerthApplication(settings)`) on the same Azurite
with monkeypatched methods, next to one server for plain HTTP. Everything runs in a container
and tables of its own (`PREFIX`), because a test here runs the collector with no grace period.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from registry.azurite import Azurite
from tests.conftest import Server, start_server, stop_server
from tests.helpers import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)

PREFIX = "berthreview"
SETTINGS = {"BERTH_TABLE_PREFIX": PREFIX, "BERTH_BLOB_CONTAINER": PREFIX, "BERTH_BLOB_DELIVERY": "proxy",
            "BERTH_DOCKER_RENDITIONS": "review/*"}


@pytest.fixture(scope="module")
def review_server(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(azurite, tmp_path_factory.mktemp("review"), **SETTINGS)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def http(review_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=review_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def name() -> str:
    return f"review/{os.urandom(6).hex()}"


def _settings(azurite: Azurite) -> Any:
    from registry.settings import load_settings

    # A short storage timeout makes a short request budget (6 s), and a repository delete's
    # wait for pushes (budget + 5 s) short enough for a test.
    return load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
                          "BERTH_BLOB_CONTAINER": PREFIX, "BERTH_TABLE_PREFIX": PREFIX,
                          "BERTH_STORAGE_TIMEOUT_SECONDS": "1"})


def with_stores(azurite: Azurite, count: int, body: Callable[..., Awaitable[Any]]) -> Any:
    """Run `body(store, ...)` with `count` in-process instances (each its own store)."""
    from registry.app import BerthApplication

    async def main() -> Any:
        apps = [BerthApplication(_settings(azurite)) for _ in range(count)]
        try:
            stores = [(await app.context()).store for app in apps]
            return await body(*stores)
        finally:
            for app in apps:
                await app.close()

    return asyncio.run(main())


def _blob_client(azurite: Azurite, location: str) -> Any:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return service.get_container_client(PREFIX).get_blob_client(location)


def _set_state(azurite: Azurite, location: str, state: str) -> None:
    blob = _blob_client(azurite, location)
    blob.set_blob_metadata({**blob.get_blob_properties().metadata, "berth": state})


def _link_location(azurite: Azurite, repository: str, digest: str) -> str:
    from registry.oci.digest import parse_digest

    async def read(store: Any) -> str:
        return (await store.blobs.stat(repository, parse_digest(digest))).location

    return with_stores(azurite, 1, read)


def _pulls(http: httpx.Client, repository: str, reference: str, body: bytes, blobs: list[bytes]) -> None:
    response = http.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200 and response.content == body, (response.status_code, response.text)
    for blob in blobs:
        got = http.get(f"/v2/{repository}/blobs/{sha256(blob)}")
        assert got.status_code == 200 and got.content == blob, (sha256(blob), got.status_code, got.text)


# --- GC: a link overwritten by a late mount ---------------------------------------------------


def test_a_mount_linking_after_a_collection_settled_does_not_break_an_acknowledged_image(
        azurite: Azurite, http: httpx.Client, name: str) -> None:
    """README: the settle-time assumption "only decides whether such a push is refused and
    retried; it never breaks an acknowledged image". But `_link` is a blind upsert: a mount
    into R overwrites R's link (to valid copy Y, which R's acknowledged manifest needs) with the
    source's copy X it found sealed; if a collection condemns and deletes X between that check
    and the link write, R's link names deleted bytes, Y is unlinked, and the next collection
    deletes Y too. No manifest push happens, so nothing re-checks.

    Two sealed copies of one digest arise from normal operation: S's link to X went (blob
    DELETE), a collection condemned X, a push of the same content into R kept its own copy Y
    and repaired the index to Y, and a mount into S that checked X before the condemnation
    linked it within the settle time, so the collection restored X. The test writes those two
    metadata changes itself (as the collection would) instead of staging that mount.
    """
    from registry.oci.digest import parse_digest

    source = f"{name}-s"
    layer, config = os.urandom(4096), json.dumps({"os": "linux", "n": os.urandom(4).hex()}).encode()
    digest = push_blob(http, source, layer)
    x = _link_location(azurite, source, digest)
    _set_state(azurite, x, "condemned")  # a collection's step 2
    push_blob(http, name, layer)  # R keeps its own copy Y; the index now names Y
    y = _link_location(azurite, name, digest)
    assert y != x
    _set_state(azurite, x, "sealed")  # step 4: a link named X at the second scan: restored
    push_blob(http, name, config)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                       "layers": [descriptor(OCI_LAYER, layer)]}).encode()
    assert put_manifest(http, name, "v1", body).status_code == 201  # acknowledged
    _pulls(http, name, "v1", body, [config, layer])

    async def race(store: Any) -> None:
        original = store.blobs._link

        async def late_link(repository: str, blob: Any) -> None:
            if repository == name:
                # The mount found X sealed; before its link lands, S's owner deletes the blob
                # and a whole collection (no grace, no settle) runs: X goes.
                await store.blobs.unlink(source, parse_digest(digest))
                await store.collector.collect(timedelta(0), 0)
            await original(repository, blob)

        store.blobs._link = late_link
        try:
            await store.blobs.mount(name, parse_digest(digest), source)  # 201 to its client
        finally:
            store.blobs._link = original
        await store.collector.collect(timedelta(0), 0)  # the next collection

    with_stores(azurite, 1, race)
    _pulls(http, name, "v1", body, [config, layer])


# --- repository delete vs a push on another instance ------------------------------------------


def test_repository_delete_never_leaves_an_acknowledged_manifest_without_its_blob_links(
        azurite: Azurite, http: httpx.Client, name: str) -> None:
    """A push on another instance checks its links, then stalls before writing its manifest,
    while the repository is deleted. The push runs under the request budget, as the route
    runs it; the delete waits out that budget after unlinking. So the push is either refused
    (503, nothing written) or lands in time for the delete's last look: never a manifest
    acknowledged with its blobs unlinked."""
    from registry.oci.digest import parse_digest
    from registry.oci.manifest import parse_manifest

    push_image(http, name, "old")  # the repository exists
    body = image_manifest(http, name)  # blobs pushed and linked; the manifest not yet
    layers = json.loads(body)
    outcome: list[str] = []

    async def race(pusher: Any, deleter: Any) -> None:
        checked, go = asyncio.Event(), asyncio.Event()
        original = pusher.manifests._check_references

        async def slow_after_check(repository: str, manifest: Any) -> None:
            await original(repository, manifest)
            checked.set()
            await go.wait()  # the write would land after the delete's last look

        pusher.manifests._check_references = slow_after_check

        async def push() -> None:
            try:
                async with asyncio.timeout(pusher._settings.request_budget_seconds):  # as routes.py runs it
                    await pusher.put_manifest(name, parse_digest(sha256(body)), body,
                                              parse_manifest(body, OCI_MANIFEST), ["new"])
                outcome.append("acknowledged")
            except TimeoutError:
                outcome.append("refused")

        pushing = asyncio.create_task(push())
        await checked.wait()
        await deleter.delete_repository(name)
        go.set()
        await pushing

    with_stores(azurite, 2, race)
    response = http.get(f"/v2/{name}/manifests/new", headers={"Accept": OCI_MANIFEST})
    if outcome == ["acknowledged"]:
        assert response.status_code == 200
        for item in [layers["config"], *layers["layers"]]:  # whole
            assert http.head(f"/v2/{name}/blobs/{item['digest']}").status_code == 200, item["digest"]
    else:
        assert outcome == ["refused"] and response.status_code == 404


# --- locks ------------------------------------------------------------------------------------


def test_concurrent_repository_patches_on_two_instances_keep_both_locks(
        azurite: Azurite, http: httpx.Client, name: str) -> None:
    """RepositoryLocks.update reads the `a:` row, then upserts all four flags unconditionally
    (REPLACE): PATCH {"writeEnabled": false} on one instance and PATCH {"readEnabled": false}
    on another, both answered 200, leave only the later one; the write lock is lost."""
    push_image(http, name, "v1")

    async def race(a: Any, b: Any) -> Any:
        b_read, a_done = asyncio.Event(), asyncio.Event()
        read_a, read_b = a.locks.fresh, b.locks.fresh

        async def a_fresh(repository: str) -> Any:
            locks = await read_a(repository)
            await b_read.wait()
            return locks

        async def b_fresh(repository: str) -> Any:
            locks = await read_b(repository)
            b_read.set()
            await a_done.wait()
            return locks

        a.locks.fresh, b.locks.fresh = a_fresh, b_fresh

        async def first() -> None:
            await a.set_repository_locks(name, {"writeEnabled": False})
            a_done.set()

        await asyncio.gather(first(), b.set_repository_locks(name, {"readEnabled": False}))
        a.locks.fresh = read_a
        return await a.locks.fresh(name)

    locks = with_stores(azurite, 2, race)
    assert not locks.readEnabled
    assert not locks.writeEnabled, "the acknowledged writeEnabled=false was overwritten"


def test_a_deleted_repository_does_not_pass_its_locks_to_the_next_one(http: httpx.Client, name: str) -> None:
    """A repository delete removes manifests, tags and links but not the `a:` row nor the
    catalog row's listEnabled: a repository pushed again under that name is born read- and
    list-disabled (pulls 404, never in _catalog)."""
    push_image(http, name, "v1")
    assert http.patch(f"/acr/v1/{name}", json={"readEnabled": False, "listEnabled": False}).status_code == 200
    assert http.delete(f"/acr/v1/{name}").status_code == 202
    assert http.get(f"/v2/{name}/tags/list").status_code == 404  # gone
    digest, _ = push_image(http, name, "v1")  # a new repository
    assert http.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}).status_code == 200
    attributes = http.get(f"/acr/v1/{name}").json()["changeableAttributes"]
    assert attributes == {"deleteEnabled": True, "writeEnabled": True, "readEnabled": True, "listEnabled": True}


def test_a_mount_does_not_read_through_a_read_disabled_repository(http: httpx.Client, name: str) -> None:
    """README: readEnabled=false on a repository: "no manifest or blob is served". A mount
    from it (`?mount=&from=`) links its blob into a repository the caller can read."""
    source, target = f"{name}-locked", f"{name}-open"
    layer = os.urandom(2048)
    digest = push_blob(http, source, layer)
    push_image(http, source, "v1")
    assert http.patch(f"/acr/v1/{source}", json={"readEnabled": False}).status_code == 200
    assert http.get(f"/v2/{source}/blobs/{digest}").status_code == 404
    mounted = http.post(f"/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert mounted.status_code == 202, "mounted out of a read-disabled repository"
    assert http.get(f"/v2/{target}/blobs/{digest}").status_code == 404


def test_a_read_disabled_manifest_is_not_served_through_its_docker_rendition(
        http: httpx.Client, name: str) -> None:
    """readEnabled=false on a manifest: "a pull by its digest or any of its tags is 404". Its
    Docker rendition (a manifest row of its own, unlocked) still serves the same image by the
    rendition's digest, which any Docker client that pulled the tag before has."""
    source, _ = push_image(http, name, "v1")
    rendition = http.get(f"/v2/{name}/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert rendition.status_code == 200
    rendition_digest = rendition.headers["Docker-Content-Digest"]
    assert rendition_digest != source
    assert http.patch(f"/acr/v1/{name}/_manifests/{source}", json={"readEnabled": False}).status_code == 200
    assert http.get(f"/v2/{name}/manifests/{source}", headers={"Accept": OCI_MANIFEST}).status_code == 404
    assert http.get(f"/v2/{name}/manifests/v1", headers={"Accept": DOCKER_MANIFEST}).status_code == 404
    assert http.get(f"/v2/{name}/manifests/{rendition_digest}",
                    headers={"Accept": DOCKER_MANIFEST}).status_code == 404


# --- PATCH bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["repository", "tag", "manifest"])
def test_a_deeply_nested_patch_body_is_400_not_500(http: httpx.Client, name: str, target: str) -> None:
    """json.loads raises RecursionError (not a ValueError) for ~1000 nested arrays; acr._changes
    catches ValueError only, so a 4 KiB body of '[' is a 500 (manifest.py and summary.py catch it)."""
    digest, _ = push_image(http, name, "v1")
    path = {"repository": f"/acr/v1/{name}", "tag": f"/acr/v1/{name}/_tags/v1",
            "manifest": f"/acr/v1/{name}/_manifests/{digest}"}[target]
    response = http.patch(path, content=b"[" * 4000, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, (response.status_code, response.text)
