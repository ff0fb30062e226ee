"""Manifests: /v2/<name>/manifests/<reference> (tag or digest)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, empty_response, read_body
from registry.auth.roles import Rule
from registry.oci.accept import parse_accept
from registry.oci.convert import DOCKER_COUNTERPART
from registry.oci.digest import Digest, digest_of
from registry.oci.errors import DIGEST_INVALID, MANIFEST_UNKNOWN, TAG_INVALID, RegistryError
from registry.oci.manifest import OCI_MANIFEST, parse_manifest
from registry.oci.names import lookup_reference, parse_reference, validate_tag
from registry.storage.manifests import MAX_TAGS_PER_PUSH, StoredManifest

URI_TOO_LONG = 414


def _headers(digest: Digest, media_type: str, size: int) -> dict[str, str]:
    return {
        "Content-Type": media_type,
        "Content-Length": str(size),
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
    }


def _not_modified(request: Request, stored: StoredManifest) -> Response | None:
    """304 when If-None-Match names the manifest's ETag (its digest) or is `*` (RFC 9110 13.1.2)."""
    header = request.headers.get("if-none-match")
    if not header:
        return None
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    if "*" not in tags and f'"{stored.digest}"' not in tags:
        return None
    return Response(status_code=304, headers={"ETag": f'"{stored.digest}"',
                                              "Docker-Content-Digest": str(stored.digest)})


async def head_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    stored = await _negotiate(request, ctx, name, reference, with_body=False)
    return _not_modified(request, stored) or Response(
        b"", headers=_headers(stored.digest, stored.media_type, stored.size))


async def get_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    stored = await _negotiate(request, ctx, name, reference, with_body=True)
    assert stored.body is not None
    return _not_modified(request, stored) or Response(
        stored.body, headers=_headers(stored.digest, stored.media_type, stored.size))


async def _negotiate(request: Request, ctx: Context, name: str, reference: str, with_body: bool) -> StoredManifest:
    """The manifest as stored, or its Docker rendition for a client that takes no OCI type.

    Docker-typed manifests are served whatever the Accept (old clients rely on it, as with the
    reference registry); an OCI one the Accept excludes is 404, unless the repository has
    renditions and the tag's Docker rendition is acceptable. A digest always gets its own bytes.
    """
    parsed = lookup_reference(reference)
    repository_locks = ctx.store.locks.peek(name)  # the hot path: no task, no read
    if repository_locks is None:
        stored, repository_locks = await asyncio.gather(_stored(ctx, name, parsed, with_body),
                                                        ctx.store.locks.fresh(name))
    else:
        stored = await _stored(ctx, name, parsed, with_body)
    if not repository_locks.readEnabled:  # a read-disabled repository serves nothing
        raise RegistryError(MANIFEST_UNKNOWN, f"manifest {reference} is not in repository {name}")
    docker_type = DOCKER_COUNTERPART.get(stored.media_type)
    if docker_type is None:
        return stored
    accept = parse_accept(request.headers.getlist("accept"))
    if accept.allows(stored.media_type):
        return stored
    kind = "manifest" if stored.media_type == OCI_MANIFEST else "index"
    message = f"OCI {kind} found, but the Accept header does not allow OCI {kind}es"
    if not isinstance(parsed, Digest) and accept.allows(docker_type) and _renditions_enabled(ctx, name):
        rendition = await ctx.store.renditions.docker(name, stored.digest, with_body)
        if rendition is not None:
            return rendition
        message += ", and it has no Docker schema 2 equivalent"
    raise RegistryError(MANIFEST_UNKNOWN, message)


async def _stored(ctx: Context, name: str, reference: Digest | str, with_body: bool) -> StoredManifest:
    """The stored manifest; in a pull-through repository (a cache rule covers it) fetched from
    upstream when missing, and a tag asked upstream again once its TTL passed."""
    try:
        stored = await ctx.store.manifests.get(name, reference, with_body=with_body)
    except RegistryError as error:
        if error.error is not MANIFEST_UNKNOWN or ctx.pullthrough is None:
            raise
        fetched = await ctx.pullthrough.manifest(name, reference, with_body)
        if fetched is None:
            raise
        return fetched
    if stored.upstream_checked is not None and isinstance(reference, str) and ctx.pullthrough is not None:
        return await ctx.pullthrough.refresh(name, reference, stored)
    return stored


def _renditions_enabled(ctx: Context, repository: str) -> bool:
    return any(Rule(pattern, frozenset()).matches(repository) for pattern in ctx.settings.docker_renditions)


def _query_tags(request: Request) -> list[str]:
    """The `tag` parameters of a PUT by digest (distribution-spec main), each valid, in order."""
    tags = list(dict.fromkeys(request.query_params.getlist("tag")))
    if len(tags) > MAX_TAGS_PER_PUSH:
        raise RegistryError(TAG_INVALID, f"at most {MAX_TAGS_PER_PUSH} tags per manifest PUT, got {len(tags)}",
                            status=URI_TOO_LONG)
    return [validate_tag(tag) for tag in tags]


async def put_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    parsed_reference = parse_reference(reference)
    if isinstance(parsed_reference, Digest):
        tags = _query_tags(request)
    else:
        tags = [parsed_reference]  # `?tag=` belongs to a PUT by digest only; here it is ignored
    body = await read_body(request, ctx.settings.max_manifest_bytes)
    manifest = parse_manifest(body, request.headers.get("content-type"))
    if isinstance(parsed_reference, Digest):
        digest = digest_of(body, parsed_reference.algorithm)
        if digest != parsed_reference:
            raise RegistryError(DIGEST_INVALID, f"manifest body has digest {digest}, not {parsed_reference}")
    else:
        digest = digest_of(body)
    await ctx.store.put_manifest(name, digest, body, manifest, tags)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": str(digest)}
    if manifest.subject is not None:
        headers["OCI-Subject"] = str(manifest.subject.digest)
    if isinstance(parsed_reference, Digest) and tags:
        headers["OCI-Tag"] = ", ".join(tags)
    return empty_response(201, headers)


async def delete_manifest(request: Request, ctx: Context, name: str, reference: str) -> Response:
    parsed_reference = lookup_reference(reference)
    if isinstance(parsed_reference, Digest):
        await ctx.store.delete_manifest(name, parsed_reference)
    else:
        await ctx.store.manifests.delete_tag(name, parsed_reference)
    return empty_response(202, {})
