"""The outbox's fence: an event given up (abandoned) can never be followed by its write, and a
write that did commit is never given up. In-process, on Azurite, with the real ManifestStore."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableTransactionError, UpdateMode

from registry.app import BerthApplication
from registry.azurite import Azurite
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import UNAVAILABLE, RegistryError
from registry.oci.manifest import Manifest, parse_manifest
from registry.ops.events import EventDispatcher
from registry.settings import load_settings
from registry.storage.events import ABANDONED, ABSENT, EVENT, HANDED_ON, PendingEvent, Webhook, pending_partition
from registry.storage.metadata import repository_key

PREFIX = "berthfence"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def run(azurite: Azurite, scenario: Callable[[BerthApplication], Awaitable[None]]) -> None:
    settings = load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string,
                              "BERTH_TABLE_PREFIX": PREFIX, "BERTH_BLOB_CONTAINER": PREFIX,
                              "BERTH_WEBHOOKS_TTL_SECONDS": "0", "BERTH_EVENT_SWEEP_AGE_SECONDS": "1"})

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
        assert (await outbox.lookup(partition, pending.id)) == (ABANDONED, None)  # a tombstone, no event
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
        await store.events.done(partition, pending.id)
        # Handed on: a retried write that meets the marker knows it committed.
        assert (await store.events.lookup(partition, pending.id)) == (HANDED_ON, None)
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


def test_the_sweep_fences_off_an_old_intent_and_later_forgets_it(azurite: Azurite) -> None:
    """Its age is the announcement's, not the row's last write (a sweep's claim rewrites the row)."""
    async def scenario(berth: BerthApplication) -> None:
        store = (await berth.context()).store
        partition = repository_key(f"fence/{uuid.uuid4().hex[:8]}")
        pending = await store.events.prepare(partition)
        assert pending is not None
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        await store.events.table.update_entity({"PartitionKey": pending_partition(pending.id), "RowKey": pending.id,
                                                "announced": long_ago}, mode=UpdateMode.MERGE)
        await asyncio.sleep(1.2)  # older than the sweep age (1 s here) by storage's clock
        dispatcher = EventDispatcher(store, berth.settings)
        try:
            first = await dispatcher.sweep()  # (other tests' intents in these tables are swept too)
            assert first.abandoned >= 1
            assert (await store.events.lookup(partition, pending.id)) == (ABANDONED, None)
            await asyncio.sleep(1.2)
            await dispatcher.sweep()  # long past twice the window: tombstone and intent go
            assert (await store.events.lookup(partition, pending.id))[0] == ABSENT
            assert [i async for i in store.events.intents(timedelta(0)) if i.event_id == pending.id] == []
        finally:
            await dispatcher.close()

    run(azurite, scenario)
