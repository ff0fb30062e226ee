"""The ACR metadata API, /acr/v1/...: what `az acr repository|manifest` and the
azure-containerregistry SDKs call, in the JSON shapes of ACR's REST reference (2021-07-01).

`changeableAttributes` are Berth's locks (storage/locks.py), set with PATCH; `signed` is
always false, ACR's default.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, empty_response, json_response, next_link, page_request, read_body
from registry.auth.authorizer import service_name
from registry.oci.digest import Digest, parse_digest
from registry.oci.errors import MANIFEST_UNKNOWN, QUERY_UNSUPPORTED, TAG_UNKNOWN, RegistryError
from registry.oci.names import is_tag
from registry.storage.attributes import (
    ORDERS,
    Cursor,
    ManifestAttributes,
    RepositoryAttributes,
    TagAttributes,
    parse_time,
)
from registry.storage.locks import parse_changes

MAX_PATCH_BYTES = 4096
# Berth's own parameter in the next link of a time-ordered page: where the page ended in time,
# so a tag re-pushed between two pages neither repeats nor hides the rest.
CURSOR_TIME = "lastUpdateTime"


def iso(time: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as ACR writes times."""
    return time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _order(request: Request) -> str | None:
    order = request.query_params.get("orderby") or "none"
    if order == "none":
        return None
    if order not in ORDERS:
        raise RegistryError(QUERY_UNSUPPORTED, f"orderby must be none, timeasc or timedesc, not {order[:40]!r}")
    return order


def _cursor(request: Request, last: str | None, order: str | None) -> Cursor:
    raw = request.query_params.get(CURSOR_TIME) if order and last else None
    if raw is None:
        return Cursor(last)
    try:
        return Cursor(last, parse_time(raw))
    except ValueError:
        raise RegistryError(QUERY_UNSUPPORTED, f"{CURSOR_TIME} must be an ISO 8601 time, not {raw[:40]!r}") from None


def _link(path: str, limit: int, last: str, order: str | None, time: datetime, **query: str) -> dict[str, str]:
    extra = {"orderby": order, CURSOR_TIME: iso(time)} if order else {}
    return next_link(path, limit, last, **extra, **query)


def tag_document(tag: TagAttributes) -> dict[str, Any]:
    return {
        "name": tag.name,
        "digest": tag.digest,
        "createdTime": iso(tag.created),
        "lastUpdateTime": iso(tag.updated),
        "signed": False,
        "changeableAttributes": tag.locks.document(),
    }


def manifest_document(manifest: ManifestAttributes) -> dict[str, Any]:
    document: dict[str, Any] = {
        "digest": manifest.digest,
        "imageSize": manifest.summary.image_size,
        "createdTime": iso(manifest.created),
        "lastUpdateTime": iso(manifest.updated),
        "mediaType": manifest.media_type,
    }
    optional = {"architecture": manifest.architecture, "os": manifest.os,
                "configMediaType": manifest.summary.config_media_type}
    document.update({key: value for key, value in optional.items() if value is not None})
    if manifest.summary.references:
        document["references"] = [
            {"digest": ref.digest, **{k: v for k, v in (("architecture", ref.architecture), ("os", ref.os)) if v}}
            for ref in manifest.summary.references
        ]
    if manifest.tags:  # ACR leaves `tags` out of an untagged manifest
        document["tags"] = manifest.tags
    document["changeableAttributes"] = manifest.locks.document()
    return document


def repository_document(registry: str, repository: RepositoryAttributes) -> dict[str, Any]:
    return {
        "registry": registry,
        "imageName": repository.name,
        "createdTime": iso(repository.created),
        "lastUpdateTime": iso(repository.updated),
        "manifestCount": repository.manifest_count,
        "tagCount": repository.tag_count,
        "changeableAttributes": repository.locks.document(),
    }


async def catalog(request: Request, ctx: Context) -> Response:
    limit, last = page_request(request, ctx.settings)
    names, after = await ctx.store.list_repositories(limit, last) if limit else ([], None)
    headers = next_link("/acr/v1/_catalog", limit, after) if after is not None else None
    return json_response({"repositories": names}, headers=headers)


async def get_repository(request: Request, ctx: Context, name: str) -> Response:
    repository = await ctx.store.attributes.repository(name)
    return json_response(repository_document(service_name(request, ctx.settings), repository))


async def delete_repository(request: Request, ctx: Context, name: str) -> Response:
    manifests, tags = await ctx.store.delete_repository(name)
    return json_response({"manifestsDeleted": manifests, "tagsDeleted": tags}, status=202)


async def list_tags(request: Request, ctx: Context, name: str) -> Response:
    limit, last = page_request(request, ctx.settings)
    order = _order(request)
    raw_digest = request.query_params.get("digest") or None
    digest = parse_digest(raw_digest) if raw_digest else None
    tags, more = await ctx.store.attributes.tags(name, limit, _cursor(request, last, order), order, digest) \
        if limit else ([], False)
    headers = None
    if more:
        filters = {"digest": str(digest)} if digest else {}
        headers = _link(f"/acr/v1/{name}/_tags", limit, tags[-1].name, order, tags[-1].updated, **filters)
    body = {"registry": service_name(request, ctx.settings), "imageName": name, "tags": [tag_document(t) for t in tags]}
    return json_response(body, headers=headers)


async def get_tag(request: Request, ctx: Context, name: str, tag: str) -> Response:
    tag_name = _tag_name(tag)
    attributes = await ctx.store.attributes.tag(name, tag_name)
    return json_response({"registry": service_name(request, ctx.settings), "imageName": name,
                          "tag": tag_document(attributes)})


async def delete_tag(request: Request, ctx: Context, name: str, tag: str) -> Response:
    tag_name = _tag_name(tag)
    try:
        await ctx.store.manifests.delete_tag(name, tag_name)
    except RegistryError as error:
        if error.error is MANIFEST_UNKNOWN:
            raise RegistryError(TAG_UNKNOWN, f"tag {tag_name} is not in repository {name}") from None
        raise
    return empty_response(202, {})


async def list_manifests(request: Request, ctx: Context, name: str) -> Response:
    limit, last = page_request(request, ctx.settings)
    order = _order(request)
    manifests, more = await ctx.store.attributes.manifests(name, limit, _cursor(request, last, order), order) \
        if limit else ([], False)
    headers = _link(f"/acr/v1/{name}/_manifests", limit, manifests[-1].digest, order,
                    manifests[-1].updated) if more else None
    body = {"registry": service_name(request, ctx.settings), "imageName": name,
            "manifests": [manifest_document(m) for m in manifests]}
    return json_response(body, headers=headers)


async def get_manifest(request: Request, ctx: Context, name: str, digest: str) -> Response:
    attributes = await ctx.store.attributes.manifest(name, _digest(digest))
    return json_response({"registry": service_name(request, ctx.settings), "imageName": name,
                          "manifest": manifest_document(attributes)})


async def delete_manifest(request: Request, ctx: Context, name: str, digest: str) -> Response:
    await ctx.store.delete_manifest(name, _digest(digest))
    return empty_response(202, {})


async def _changes(request: Request) -> dict[str, bool]:
    """The flags a PATCH body sets (ACR's RepositoryWriteableProperties and its kin)."""
    body = await read_body(request, MAX_PATCH_BYTES)
    try:
        return parse_changes(json.loads(body or b"{}"))
    except (ValueError, RecursionError) as error:  # json.JSONDecodeError is a ValueError
        raise RegistryError(QUERY_UNSUPPORTED, f"invalid changeable attributes: {str(error)[:200]}") from None


async def update_repository(request: Request, ctx: Context, name: str) -> Response:
    await ctx.store.set_repository_locks(name, await _changes(request))
    return await get_repository(request, ctx, name)


async def update_tag(request: Request, ctx: Context, name: str, tag: str) -> Response:
    tag_name = _tag_name(tag)
    try:
        await ctx.store.manifests.set_tag_locks(name, tag_name, await _changes(request))
    except RegistryError as error:
        if error.error is MANIFEST_UNKNOWN:
            raise RegistryError(TAG_UNKNOWN, f"tag {tag_name} is not in repository {name}") from None
        raise
    return await get_tag(request, ctx, name, tag)


async def update_manifest(request: Request, ctx: Context, name: str, digest: str) -> Response:
    await ctx.store.manifests.set_manifest_locks(name, _digest(digest), await _changes(request))
    return await get_manifest(request, ctx, name, digest)


def _tag_name(reference: str) -> str:
    if not is_tag(reference):
        raise RegistryError(TAG_UNKNOWN, f"no tag can exist under {reference[:200]!r}")
    return reference


def _digest(reference: str) -> Digest:
    try:
        return parse_digest(reference)
    except RegistryError:
        raise RegistryError(MANIFEST_UNKNOWN, f"{reference[:200]!r} is not a digest; manifests are named by "
                            "digest here") from None
