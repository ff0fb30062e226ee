"""Blob reads and deletes: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from registry.api.http import Context, empty_response, parse_range, storage_serves_range
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import BLOB_UNKNOWN, RegistryError
from registry.storage.locks import check_delete
from registry.storage.registry_store import BlobInfo

OCTET_STREAM = "application/octet-stream"


async def _readable_blob(ctx: Context, name: str, digest: str, fetch: bool = True) -> BlobInfo:
    """The blob as linked in the repository, unless the repository is read-disabled (a lock).
    `fetch`: in a pull-through repository, fetch a missing blob (and wait for it)."""
    parsed = parse_digest(digest)
    locks = ctx.store.locks.peek(name)  # the hot path: no task, no read
    if locks is None:
        blob, locks = await asyncio.gather(_linked(ctx, name, parsed, fetch), ctx.store.locks.fresh(name))
    else:
        blob = await _linked(ctx, name, parsed, fetch)
    if not locks.readEnabled:
        raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {name}")
    return blob


async def _linked(ctx: Context, name: str, digest: Digest, fetch: bool) -> BlobInfo:
    """The blob's link; in a pull-through repository fetched from upstream when missing."""
    try:
        return await ctx.store.blobs.stat(name, digest)
    except RegistryError as error:
        if error.error is not BLOB_UNKNOWN or ctx.pullthrough is None or not fetch:
            raise
        fetched = await ctx.pullthrough.blob(name, digest)
        if fetched is None:
            raise
        return fetched


class TapResponse(StreamingResponse):
    """Streams a download's chunks; whatever ends the response (done, failed, the client gone,
    never started), the download is told, so it never waits for this client."""

    def __init__(self, tap: Any, headers: dict[str, str]):
        super().__init__(tap.chunks(), headers=headers)
        self._tap = tap

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._tap.leave()


async def head_blob(request: Request, ctx: Context, name: str, digest: str) -> Response:
    try:
        blob = await _readable_blob(ctx, name, digest, fetch=False)
        size, found = blob.size, blob.digest
    except RegistryError as error:
        # In a pull-through repository a blob not here yet is answered from upstream's HEAD: a
        # client checking for it does not make Berth download it (its GET will).
        if error.error is not BLOB_UNKNOWN or ctx.pullthrough is None:
            raise
        found = parse_digest(digest)
        upstream = await ctx.pullthrough.blob_size(name, found)
        if upstream is None:
            raise
        size = upstream
    return Response(
        b"",
        headers={
            "Content-Length": str(size),
            "Content-Type": OCTET_STREAM,
            "Docker-Content-Digest": str(found),
            "Accept-Ranges": "bytes",
        },
    )


async def get_blob(request: Request, ctx: Context, name: str, digest: str) -> Response:
    # In a pull-through repository, a whole-blob GET of a blob not here yet may start its
    # download and get the bytes as they stream into storage; anything else waits for the copy.
    streamable = ctx.pullthrough is not None and not request.headers.get("range")
    try:
        blob = await _readable_blob(ctx, name, digest, fetch=not streamable)
    except RegistryError as error:
        if error.error is not BLOB_UNKNOWN or not streamable:
            raise
        assert ctx.pullthrough is not None
        streamed = await ctx.pullthrough.stream_blob(name, parse_digest(digest))
        if streamed is not None:
            size, tap = streamed
            return TapResponse(tap, headers={"Content-Length": str(size), "Content-Type": OCTET_STREAM,
                                             "Docker-Content-Digest": digest})
        blob = await _readable_blob(ctx, name, digest)
    digest_header = {"Docker-Content-Digest": str(blob.digest)}
    range_header = request.headers.get("range")
    if ctx.settings.blob_delivery == "redirect" and storage_serves_range(range_header, blob.size):
        # Storage serves the bytes (and the Range) itself; we only hand out a short-lived URL.
        # Storage's response carries no Docker-Content-Digest: this 307 does.
        url = await ctx.store.blob_url(blob)
        return RedirectResponse(url, status_code=307, headers=digest_header)
    byte_range = parse_range(range_header, blob.size)
    headers = {**digest_header, "Content-Type": OCTET_STREAM, "Accept-Ranges": "bytes"}
    if byte_range is None:
        headers["Content-Length"] = str(blob.size)
        return StreamingResponse(await ctx.store.read_blob(blob), headers=headers)
    start, end = byte_range
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
    body = await ctx.store.read_blob(blob, start, end - start + 1)
    return StreamingResponse(body, status_code=206, headers=headers)


async def delete_blob(request: Request, ctx: Context, name: str, digest: str) -> Response:
    check_delete(await ctx.store.locks.fresh(name), f"repository {name}")
    await ctx.store.blobs.unlink(name, parse_digest(digest))
    return empty_response(202, {})
