"""Staging a stream as blocks, against a real Azurite: whatever sizes the chunks arrive in, the
blocks are full ones and a last short one, and the committed blob holds the stream's bytes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.storage.blob import BlobServiceClient

from registry.azurite import Azurite
from registry.settings import load_settings
from registry.storage.clients import create_clients
from registry.storage.content import ContentStore, LengthMismatch

BLOCK = 64 * 1024  # the smallest BERTH_BLOCK_SIZE


async def _chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        yield data[at:at + size]
        at += size
    if at < len(data):
        yield data[at:]


def _stage(azurite: Azurite, container: str, name: str, data: bytes, sizes: list[int],
           expected_length: int | None = None) -> tuple[list[str], int]:
    async def main() -> tuple[list[str], int]:
        clients = create_clients(load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string}))
        try:
            content = ContentStore(clients.blob_service, container, BLOCK, 4, clients.session)
            staged, total = await content.stage(name, _chunks(data, sizes), expected_length)
            await content.commit(name, [], staged, {}, None)
            return staged, total
        finally:
            await clients.close()
    return asyncio.run(main())


@pytest.mark.parametrize("sizes", [
    [],                                          # one chunk with everything
    [1, 0, BLOCK - 1, BLOCK, 0, 3 * BLOCK + 5],  # empty chunks, exact boundaries, one chunk of several blocks
    [7] * 100 + [BLOCK * 2 - 700],               # many small ones, then one that crosses two boundaries
    [1] * 5000 + [BLOCK] + [3] * 2000,           # a trickle across a boundary, a large one, a trickle again
])
def test_chunks_of_any_size_stage_as_full_blocks_and_commit_the_same_bytes(azurite: Azurite,
                                                                           sizes: list[int]) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"staging{uuid.uuid4().hex[:12]}"
    service.create_container(container)
    data = os.urandom(5 * BLOCK + 1234)
    staged, total = _stage(azurite, container, "blob", data, sizes, expected_length=len(data))
    assert total == len(data)
    blob = service.get_blob_client(container, "blob")
    committed, _ = blob.get_block_list("committed")
    assert [block.id for block in committed] == staged
    assert [block.size for block in committed] == [BLOCK] * 5 + [1234]
    assert blob.download_blob().readall() == data


def test_a_producer_that_reuses_its_buffer_still_stores_what_it_sent(azurite: Azurite) -> None:
    """Chunks wait for their block to fill: a chunk handed over in a buffer its producer
    overwrites next is kept as it was when handed over."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"staging{uuid.uuid4().hex[:12]}"
    service.create_container(container)
    data = os.urandom(8 * BLOCK + 99)
    size = 100_000  # large enough to be kept as it came, not gathered with others

    async def reused() -> AsyncIterator[bytes]:
        buffer = bytearray(size)
        for at in range(0, len(data), size):
            piece = data[at:at + size]
            buffer[:len(piece)] = piece
            yield memoryview(buffer)[:len(piece)]  # type: ignore[misc]

    async def main() -> None:
        clients = create_clients(load_settings({"BERTH_STORAGE_CONNECTION_STRING": azurite.connection_string}))
        try:
            content = ContentStore(clients.blob_service, container, 4 * BLOCK, 2, clients.session)
            staged, _ = await content.stage("blob", reused(), len(data))
            await content.commit("blob", [], staged, {}, None)
        finally:
            await clients.close()

    asyncio.run(main())
    assert service.get_blob_client(container, "blob").download_blob().readall() == data


def test_a_stream_shorter_than_announced_is_refused(azurite: Azurite) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = f"staging{uuid.uuid4().hex[:12]}"
    service.create_container(container)
    with pytest.raises(LengthMismatch):
        _stage(azurite, container, "blob", os.urandom(BLOCK + 1), [BLOCK // 2], expected_length=BLOCK + 2)
