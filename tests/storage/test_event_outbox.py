"""The outbox's fence: an event given up (abandoned) can never be followed by its write, and a
write that did commit is never given up. In-process, on Azurite, with the real ManifestStore."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from azure.data.tables import TableTransactionError

from registry.app import BerthApplication
from registry.azurite import Azurite
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import UNAVAILABLE, RegistryError
from registry.oci.manifest import Manifest, parse_manifest
from registry.settings import load_settings
from registry.storage.events import EVENT, PendingEvent, Webhook
from registry.storage.metadata import repository_key

PREFIX = "berthfence"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def run(azurite: Azurite, scenario: Callable[[BerthApplication], Awaitable[None]]) -> None:
    settings = load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
                              "BERTH_TABLE_PREFIX": PREFIX, "BERTH_BLOB_CONTAINER": PREFIX,
                              "BERTH_WEBHOOKS_TTL_SECONDS": "0"})

    async def main() -> None:
        berth = BerthApplication(settings)
        try:
            store = (await berth.context()).store
            if not await store.webhooks.list():  # a subscriber, so writes record events
                await store.webhooks.create(Webhook("fencehook", "https://hooks.example/x"), ())
            await scenario(berth)
        finally:
            await berth.close()

    asyncio.run(main())


async def _manifest(berth: BerthApplication, repository: str) -> tuple[Digest, bytes, Manifest]:
    """A manifest whose one blob (the empty config) is in `repository`."""
    store = (await berth.context()).store
    empty = parse_digest("sha256:" + hashlib.sha256(b"{}").hexdigest())

    async def chunks() -> AsyncIterator[bytes]:
        yield b"{}"

    session = await store.uploads.append(store.uploads.fresh(repository, "test", "sha256"), chunks(), 2, empty)
    await store.finish_upload(session, empty)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.test",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(empty), "size": 2},
                       "layers": [], "annotations": {"n": os.urandom(8).hex()}}).encode()
    return parse_digest("sha256:" + hashlib.sha256(body).hexdigest()), body, parse_manifest(body, OCI_MANIFEST)


def test_an_abandoned_event_fences_off_its_late_write(azurite: Azurite) -> None:
    async def scenario(berth: BerthApplication) -> None:
        outbox = (await berth.context()).store.events
        partition = repository_key(f"fence/{uuid.uuid4().hex[:8]}")
        pending = await outbox.prepare(partition)
        assert pending is not None
        assert await outbox.abandon(partition, pending.id) is None  # nothing committed: a tombstone
        with pytest.raises(TableTransactionError) as refused:
            await (await berth.context()).store.metadata.repos.submit_transaction(
                [pending.operation("push", "fence/x", "sha256:" + "0" * 64, OCI_MANIFEST, 2, ("v1",))])
        assert refused.value.status_code == 409
        assert await outbox.find(partition, pending.id) is None  # the tombstone is no event
        with pytest.raises(RegistryError) as late:
            await outbox.recorded(pending)
        assert late.value.error is UNAVAILABLE

    run(azurite, scenario)


def test_a_write_that_committed_is_never_abandoned(azurite: Azurite) -> None:
    async def scenario(berth: BerthApplication) -> None:
        store = (await berth.context()).store
        partition = repository_key(f"fence/{uuid.uuid4().hex[:8]}")
        pending = await store.events.prepare(partition)
        assert pending is not None
        await store.metadata.repos.submit_transaction(
            [pending.operation("push", "fence/x", "sha256:" + "0" * 64, OCI_MANIFEST, 2, ("v1",))])
        row = await store.events.abandon(partition, pending.id)
        assert row is not None and row["RowKey"] == EVENT + pending.id  # handed on, not fenced
        assert await store.events.recorded(pending)

    run(azurite, scenario)


def test_a_push_whose_event_was_given_up_fails_and_leaves_nothing(azurite: Azurite) -> None:
    """The real push path, with the event abandoned between its announcement and its write (as a
    sweep does to a write slower than its window): the push answers 503 and stores nothing."""
    async def scenario(berth: BerthApplication) -> None:
        store = (await berth.context()).store
        repository = f"fence/{uuid.uuid4().hex[:8]}"
        digest, body, manifest = await _manifest(berth, repository)
        prepare = store.events.prepare

        async def prepare_then_abandon(partition: str) -> PendingEvent | None:
            pending = await prepare(partition)
            assert pending is not None
            await store.events.abandon(partition, pending.id)
            return pending

        store.events.prepare = prepare_then_abandon  # type: ignore[method-assign]
        with pytest.raises(RegistryError) as refused:
            await store.manifests.put(repository, digest, body, manifest, ["v1"])
        assert refused.value.error is UNAVAILABLE
        store.events.prepare = prepare  # type: ignore[method-assign]
        rows = [row async for row in store.metadata.scan(store.metadata.repos, repository_key(repository), "")]
        # The config's link (uploaded before) and the tombstone: no manifest, no tag.
        assert [row["RowKey"][:2] for row in rows] == ["b:", "e:"]
        await store.manifests.put(repository, digest, body, manifest, ["v1"])  # a retry goes through
        assert (await store.manifests.get(repository, "v1")).digest == digest

    run(azurite, scenario)
