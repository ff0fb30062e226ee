"""Manifests: /v2/<name>/manifests/<reference> (tag or digest)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, empty_response, read_body
from registry.oci.digest import Digest, digest_of
from registry.oci.errors import DIGEST_INVALID, RegistryError
from registry.oci.manifest import parse_manifest
from registry.oci.names import parse_reference, validate_tag


def _headers(digest: Digest, media_type: str, size: int) -> dict[str, str]:
    return {
        "Content-Type": media_type,
        "Content-Length": str(size),
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
    }


async def head_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    stored = await ctx.store.manifests.get(name, parse_reference(reference), with_body=False)
    return Response(b"", headers=_headers(stored.digest, stored.media_type, stored.size))


async def get_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    stored = await ctx.store.manifests.get(name, parse_reference(reference))
    assert stored.body is not None
    return Response(stored.body, headers=_headers(stored.digest, stored.media_type, stored.size))


async def put_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    parsed_reference = parse_reference(reference)
    body = await read_body(request, ctx.settings.max_manifest_bytes)
    manifest = parse_manifest(body, request.headers.get("content-type"))
    if isinstance(parsed_reference, Digest):
        digest = digest_of(body, parsed_reference.algorithm)
        if digest != parsed_reference:
            raise RegistryError(DIGEST_INVALID, f"manifest body has digest {digest}, not {parsed_reference}")
        tag = None
    else:
        digest = digest_of(body)
        tag = validate_tag(parsed_reference)
    await ctx.store.put_manifest(name, digest, body, manifest, tag)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": str(digest)}
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject.digest)
    return empty_response(201, headers)


async def delete_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    parsed_reference = parse_reference(reference)
    if isinstance(parsed_reference, Digest):
        await ctx.store.manifests.delete(name, parsed_reference)
    else:
        await ctx.store.manifests.delete_tag(name, parsed_reference)
    return empty_response(202, {})
