"""Blob reads and deletes: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from registry.api.http import Context, empty_response, parse_range, storage_serves_range
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import BLOB_UNKNOWN, RegistryError
from registry.storage.locks import check_delete
from registry.storage.registry_store import BlobInfo

OCTET_STREAM = "application/octet-stream"


async def _readable_blob(ctx: Context, name: str, digest: str) -> BlobInfo:
    """The blob as linked in the repository, unless the repository is read-disabled (a lock)."""
    parsed = parse_digest(digest)
    locks = ctx.store.locks.peek(name)  # the hot path: no task, no read
    if locks is None:
        blob, locks = await asyncio.gather(_linked(ctx, name, parsed), ctx.store.locks.fresh(name))
    else:
        blob = await _linked(ctx, name, parsed)
    if not locks.readEnabled:
        raise RegistryError(BLOB_UNKNOWN, f"blob {digest} is not in repository {name}")
    return blob


async def _linked(ctx: Context, name: str, digest: Digest) -> BlobInfo:
    """The blob's link; in a pull-through repository fetched from upstream when missing."""
    try:
        return await ctx.store.blobs.stat(name, digest)
    except RegistryError as error:
        if error.error is not BLOB_UNKNOWN or ctx.pullthrough is None:
            raise
        fetched = await ctx.pullthrough.blob(name, digest)
        if fetched is None:
            raise
        return fetched


async def _streamed_from_upstream(request: Request, ctx: Context, name: str, digest: str) -> Response | None:
    """In a pull-through repository, a blob not here yet is sent while it streams into storage,
    to the request that starts its download (a whole-blob GET; anything else waits for it)."""
    if ctx.pullthrough is None or request.headers.get("range"):
        return None
    parsed = parse_digest(digest)
    try:
        await ctx.store.blobs.stat(name, parsed)
        return None  # here already: the usual path (and its lock check)
    except RegistryError as error:
        if error.error is not BLOB_UNKNOWN:
            raise
    streamed = await ctx.pullthrough.stream_blob(name, parsed)
    if streamed is None:
        return None
    size, chunks = streamed
    return StreamingResponse(chunks, headers={"Content-Length": str(size), "Content-Type": OCTET_STREAM,
                                              "Docker-Content-Digest": str(parsed)})


async def head_blob(request: Request, ctx: Context, name: str, digest: str) -> Response:
    blob = await _readable_blob(ctx, name, digest)
    return Response(
        b"",
        headers={
            "Content-Length": str(blob.size),
            "Content-Type": OCTET_STREAM,
            "Docker-Content-Digest": str(blob.digest),
            "Accept-Ranges": "bytes",
        },
    )


async def get_blob(request: Request, ctx: Context, name: str, digest: str) -> Response:
    streamed = await _streamed_from_upstream(request, ctx, name, digest)
    if streamed is not None:
        return streamed
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
