"""Blob uploads: POST /v2/<name>/blobs/uploads/ and the session at .../uploads/<id>.

The POST, PATCH and PUT of one push may reach three different instances: each request takes
the upload's state from the signed `_state` of its URL (storage/upload_state.py), which every
response's Location carries forward, and storage arbitrates every commit.
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, declared_length, empty_response
from registry.auth import Grant
from registry.oci.digest import ALGORITHMS, parse_digest
from registry.oci.errors import BLOB_UPLOAD_INVALID, DIGEST_INVALID, RANGE_INVALID, SIZE_INVALID, RegistryError
from registry.oci.names import validate_name
from registry.storage.locks import Locks, check_write
from registry.storage.registry_store import BlobInfo, UploadSession

# The spec's `<start>-<end>`, and RFC 9110's `bytes <start>-<end>/<total or *>` that some clients
# send; `bytes=` is a Range request's syntax, not a Content-Range, and is refused.
# Repositories an automatic mount (no `from`) tries, in the order the token names them.
MAX_MOUNT_SOURCES = 16
_CONTENT_RANGE = re.compile(r"(?:bytes )?([0-9]{1,18})-([0-9]{1,18})|bytes ([0-9]{1,18})-([0-9]{1,18})/(?:[0-9]+|\*)")


# The query parameter that carries an upload's signed state (the name distribution uses too).
STATE_PARAM = "_state"


def upload_headers(session: UploadSession) -> dict[str, str]:
    """Location, Range and Docker-Upload-UUID, as every upload response carries them."""
    end = session.offset - 1 if session.offset > 0 else 0
    return {
        "Location": f"/v2/{session.repository}/blobs/uploads/{session.id}?{STATE_PARAM}={session.token}",
        "Range": f"0-{end}",
        "Docker-Upload-UUID": session.id,
    }


def caller(request: Request) -> str:
    """Who is uploading: an upload session belongs to the caller that started it."""
    return request.state.grant.subject


def blob_created(name: str, blob: BlobInfo) -> Response:
    return empty_response(
        201, {"Location": f"/v2/{name}/blobs/{blob.digest}", "Docker-Content-Digest": str(blob.digest)}
    )


def _digest_algorithm(request: Request) -> str:
    """The POST's `digest-algorithm` (distribution-spec main): what the running hash computes."""
    algorithm = request.query_params.get("digest-algorithm") or "sha256"
    if algorithm not in ALGORITHMS:
        raise RegistryError(DIGEST_INVALID, f"unsupported digest algorithm {algorithm[:40]!r}; "
                            f"supported: {', '.join(ALGORITHMS)}")
    return algorithm


async def _mount(request: Request, ctx: Context, name: str, mount: str) -> BlobInfo | None:
    """The blob `?mount=` names, linked into `name` if the caller may read it somewhere.

    Mounting needs pull on a repository that has the blob; without it (or without the blob
    there) the answer is a fresh session (202) and the client uploads the bytes instead.
    Without `from` (distribution-spec main: "MAY treat `from` as optional"), any repository
    the caller's grant lets it pull is a source; with auth off, any repository at all.
    """
    digest = parse_digest(mount)
    grant: Grant = request.state.grant
    source = request.query_params.get("from")
    if source:
        source = validate_name(source)
        if not grant.allows("repository", source, "pull") or not (await ctx.store.locks.cached(source)).readEnabled:
            return None  # a read-disabled repository lends nothing either
        return await ctx.store.blobs.mount(name, digest, source)
    if grant.everything:
        return await ctx.store.blobs.mount_indexed(name, digest)
    readable = [scope.name for scope in grant.scopes if scope.type == "repository" and scope.name != name
                and grant.allows("repository", scope.name, "pull")]
    for candidate in readable[:MAX_MOUNT_SOURCES]:
        if not (await ctx.store.locks.cached(candidate)).readEnabled:
            continue
        blob = await ctx.store.blobs.mount(name, digest, candidate)
        if blob is not None:
            return blob
    return None


async def start_upload(request: Request, ctx: Context, name: str) -> Response:
    # A write-disabled repository takes no new uploads or mounts (an upload started before the
    # lock may still finish). Its flags are read while the request goes on, and checked before
    # anything is linked; a session row written meanwhile for a refused POST just expires.
    locks = asyncio.ensure_future(ctx.store.locks.fresh(name))
    try:
        return await _start_upload(request, ctx, name, locks)
    finally:
        discard(locks)


async def _start_upload(request: Request, ctx: Context, name: str, locks: asyncio.Future[Locks]) -> Response:
    mount = request.query_params.get("mount")
    if mount:
        check_write(await locks, f"repository {name}")
        blob = await _mount(request, ctx, name, mount)
        if blob is not None:
            return blob_created(name, blob)
    digest_param = request.query_params.get("digest")
    if digest_param is None:
        session, repository_locks = await asyncio.gather(
            ctx.store.uploads.start(name, caller(request), _digest_algorithm(request)), locks)
        check_write(repository_locks, f"repository {name}")
        # Each PATCH ends in its own storage block, and a blob holds at most 50,000 of them:
        # chunks of at least a block keep every size up to the storage limit reachable.
        headers = {**upload_headers(session), "OCI-Chunk-Min-Length": str(ctx.settings.block_size)}
        return empty_response(202, headers)
    # Monolithic upload: the whole blob is this request's body, so no session row is needed;
    # a failure leaves nothing visible, and the client simply pushes again.
    digest = parse_digest(digest_param)
    session = ctx.store.uploads.fresh(name, caller(request), digest.algorithm)
    session = await ctx.store.uploads.append(session, request.stream(), declared_length(request), digest)
    check_write(await locks, f"repository {name}")
    return blob_created(name, await ctx.store.finish_upload(session, digest))


def discard(task: asyncio.Future[Locks]) -> None:
    """Cancel the flags' read if the request ended without it, and never leave it unretrieved."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _resume(request: Request, ctx: Context, name: str, upload_id: str) -> UploadSession:
    return await ctx.store.uploads.resume(name, upload_id, caller(request), request.query_params.get(STATE_PARAM))


async def upload_status(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    session = await ctx.store.uploads.current(await _resume(request, ctx, name, upload_id))
    return empty_response(204, upload_headers(session))


def _chunk_bounds(request: Request) -> tuple[int | None, int | None]:
    """(first byte, length) of this request's body: Content-Range checked against Content-Length."""
    expected = declared_length(request)
    content_range = request.headers.get("content-range")
    if not content_range:
        return None, expected
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if not match:
        raise RegistryError(BLOB_UPLOAD_INVALID, f"malformed Content-Range {content_range[:60]!r}; "
                            "expected <start>-<end>")
    first, last = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    start, end = int(first), int(last)
    if end < start:
        raise RegistryError(BLOB_UPLOAD_INVALID, f"malformed Content-Range {content_range[:60]!r}")
    if expected is not None and expected != end - start + 1:
        raise RegistryError(SIZE_INVALID, f"Content-Range {start}-{end} disagrees with Content-Length {expected}")
    return start, end - start + 1


async def _continuing(ctx: Context, session: UploadSession, first: int | None) -> UploadSession:
    """The session a chunk starting at `first` continues: the client's state, or storage's where
    that is where the chunk starts (a client that lost a response and asked where it stands)."""
    if first is None or first == session.offset:
        return session
    current = await ctx.store.uploads.current(session)
    if first != current.offset:
        raise RegistryError(RANGE_INVALID, f"chunk at {first} does not continue the upload at offset "
                            f"{current.offset}", headers=upload_headers(current))
    return current


async def patch_upload(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    first, length = _chunk_bounds(request)
    session = await _continuing(ctx, await _resume(request, ctx, name, upload_id), first)
    try:
        session = await ctx.store.uploads.append(session, request.stream(), length)
    except RegistryError as error:
        if error.error is RANGE_INVALID:  # lost a race: say where the upload now stands
            error.headers.update(upload_headers(await ctx.store.uploads.current(session)))
        raise
    return empty_response(202, upload_headers(session))


async def finish_upload(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    digest_param = request.query_params.get("digest")
    if not digest_param:
        raise RegistryError(DIGEST_INVALID, "the closing PUT needs ?digest=")
    digest = parse_digest(digest_param)
    session = await _resume(request, ctx, name, upload_id)
    # A finished upload may be finished again (a retried PUT): publishing is idempotent.
    if not _has_no_body(request):
        first, length = _chunk_bounds(request)
        session = await _continuing(ctx, session, first)
        try:
            session = await ctx.store.uploads.append(session, request.stream(), length, digest)
        except RegistryError as error:
            if error.error is not RANGE_INVALID:
                raise
            # Lost a race: if another request finished the upload as this digest, so be it.
            session = await ctx.store.uploads.current(session, finished_ok=True)
            if session.sealed_digest is not None and session.sealed_digest != str(digest):
                raise RegistryError(DIGEST_INVALID, f"the upload was finished as {session.sealed_digest}") from None
            if session.sealed_digest is None:
                error.headers.update(upload_headers(session))
                raise
    blob = await ctx.store.finish_upload(session, digest)
    return blob_created(name, blob)


def _has_no_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers


async def cancel_upload(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    await ctx.store.uploads.cancel(await _resume(request, ctx, name, upload_id))
    return empty_response(204, {})
