"""Blob uploads: POST /v2/<name>/blobs/uploads/ and the session at .../uploads/<id>."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, declared_length, empty_response
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import BLOB_UPLOAD_INVALID, DIGEST_INVALID, RANGE_INVALID, SIZE_INVALID, RegistryError
from registry.oci.names import validate_name
from registry.storage.registry_store import BlobInfo, UploadSession

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def upload_headers(session: UploadSession) -> dict[str, str]:
    """Location, Range and Docker-Upload-UUID, as every upload response carries them."""
    end = session.offset - 1 if session.offset > 0 else 0
    return {
        "Location": f"/v2/{session.repository}/blobs/uploads/{session.id}",
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


async def start_upload(request: Request, ctx: Context, name: str) -> Response:
    mount = request.query_params.get("mount")
    source = request.query_params.get("from")
    if mount and source:
        digest_to_mount, source = parse_digest(mount), validate_name(source)
        # Mounting needs pull on the source; without it (or without the blob there) the
        # answer is a fresh session (202) and the client uploads the bytes instead.
        if request.state.grant.allows("repository", source, "pull"):
            blob = await ctx.store.mount_blob(name, digest_to_mount, source)
            if blob is not None:
                return blob_created(name, blob)
    digest_param = request.query_params.get("digest")
    digest = parse_digest(digest_param) if digest_param is not None else None
    session = await ctx.store.start_upload(name, caller(request))
    if digest is None:
        return empty_response(202, upload_headers(session))
    # Monolithic upload: the whole blob is this request's body.
    try:
        session = await ctx.store.append_upload(session, request.stream(), declared_length(request), digest)
        blob = await ctx.store.finish_upload(session, digest)
    except BaseException:
        await ctx.store.cancel_upload(session)
        raise
    return blob_created(name, blob)


async def upload_status(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    session = await ctx.store.get_upload(name, upload_id, caller(request))
    return empty_response(204, upload_headers(session))


async def _append_body(request: Request, ctx: Context, session: UploadSession,
                       finishing: Digest | None = None) -> UploadSession:
    """Append this request's body after checking Content-Range against the upload's offset."""
    expected = declared_length(request)
    content_range = request.headers.get("content-range")
    if content_range:
        match = _CONTENT_RANGE.match(content_range.strip())
        if not match:
            raise RegistryError(BLOB_UPLOAD_INVALID, f"malformed Content-Range {content_range[:60]!r}")
        start, end = int(match.group(1)), int(match.group(2))
        if start != session.offset or end < start:
            raise RegistryError(
                RANGE_INVALID,
                f"chunk {start}-{end} does not continue the upload at offset {session.offset}",
                headers=upload_headers(session),
            )
        if expected is not None and expected != end - start + 1:
            raise RegistryError(SIZE_INVALID, f"Content-Range {start}-{end} disagrees with Content-Length {expected}")
        expected = end - start + 1
    try:
        return await ctx.store.append_upload(session, request.stream(), expected, finishing)
    except RegistryError as error:
        if error.error is RANGE_INVALID:
            current = await ctx.store.get_upload(session.repository, session.id, caller(request))
            error.headers.update(upload_headers(current))
        raise


async def patch_upload(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    session = await ctx.store.get_upload(name, upload_id, caller(request))
    session = await _append_body(request, ctx, session)
    return empty_response(202, upload_headers(session))


async def finish_upload(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    digest_param = request.query_params.get("digest")
    if not digest_param:
        raise RegistryError(DIGEST_INVALID, "the closing PUT needs ?digest=")
    digest = parse_digest(digest_param)
    session = await ctx.store.get_upload(name, upload_id, caller(request))
    session = await _append_body(request, ctx, session, digest)
    blob = await ctx.store.finish_upload(session, digest)
    return blob_created(name, blob)


async def cancel_upload(request: Request, ctx: Context, name: str, upload_id: str) -> Response:
    session = await ctx.store.get_upload(name, upload_id, caller(request))
    await ctx.store.cancel_upload(session)
    return empty_response(204, {})
