"""The pull-through cache's tap (pullthrough._Tap): a download's chunks, handed to the client
that started it while they are stored, without ever making the download wait on that client."""

from __future__ import annotations

import asyncio

import pytest

from registry.ops import pullthrough
from registry.ops.pullthrough import _NotStreaming, _Tap


def test_the_client_gets_every_chunk_in_order_and_the_last_only_when_the_download_is_done() -> None:
    async def scenario() -> None:
        tap = _Tap()
        tap.announce(30)
        received: list[bytes] = []

        async def client() -> None:
            assert await tap.size == 30
            async for chunk in tap.chunks():
                received.append(chunk)

        reading = asyncio.ensure_future(client())
        for n in range(3):
            await tap.put(bytes([n]) * 10)
        await asyncio.sleep(0.05)
        assert received == [b"\x00" * 10, b"\x01" * 10]  # the last one is held back
        tap.finish()
        await reading
        assert received == [b"\x00" * 10, b"\x01" * 10, b"\x02" * 10]

    asyncio.run(scenario())


def test_a_download_that_turns_out_wrong_cuts_the_client_short() -> None:
    async def scenario() -> None:
        tap = _Tap()
        tap.announce(20)
        await tap.put(b"a" * 10)
        await tap.put(b"b" * 10)
        tap.fail(ValueError("digest mismatch"))
        got = []
        with pytest.raises(ValueError):
            async for chunk in tap.chunks():
                got.append(chunk)
        assert got == [b"a" * 10]  # never the whole blob

    asyncio.run(scenario())


def test_a_client_that_stops_reading_or_never_comes_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pullthrough, "TAP_PATIENCE", 0.2)

    async def scenario() -> None:
        tap = _Tap()
        tap.announce(100)
        async with asyncio.timeout(5):  # the producer is never stuck: it goes on without the client
            for _ in range(100):
                await tap.put(b"x")
        tap.finish()

    asyncio.run(scenario())


def test_nothing_sent_means_no_stream() -> None:
    async def scenario() -> None:
        tap = _Tap()
        tap.announce(0)
        tap.finish()  # stored meanwhile, or an empty blob: the request is answered from storage
        with pytest.raises(_NotStreaming):
            await tap.size

    asyncio.run(scenario())
