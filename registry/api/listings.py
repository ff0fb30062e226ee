"""Content discovery: the API root, tag lists, the catalog and the referrers API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, json_response, next_link, page_request
from registry.oci.digest import parse_digest
from registry.oci.manifest import OCI_INDEX
from registry.settings import MiB
from registry.storage.manifests import encode_listing

# Clients read at most 4 MiB of an index (oras-go, go-containerregistry): a referrers page stays
# within 1 MiB, unless a single descriptor is larger (it then has a page of its own).
MAX_REFERRERS_PAGE_BYTES = MiB
_INDEX_ENVELOPE = 256  # the index around the descriptors


async def api_root(request: Request, ctx: Context) -> Response:
    return json_response({})


async def list_tags(request: Request, ctx: Context, name: str) -> Response:
    limit, last = page_request(request, ctx.settings)
    tags, more = await ctx.store.list_tags(name, limit, last) if limit else ([], False)
    headers = next_link(f"/v2/{name}/tags/list", limit, tags[-1]) if more else None
    return json_response({"name": name, "tags": tags}, headers=headers)


async def catalog(request: Request, ctx: Context) -> Response:
    limit, last = page_request(request, ctx.settings)
    names, after = await ctx.store.list_repositories(limit, last) if limit else ([], None)
    headers = next_link("/v2/_catalog", limit, after) if after is not None else None
    return json_response({"repositories": names}, headers=headers)


async def referrers(request: Request, ctx: Context, name: str, digest: str) -> Response:
    subject = parse_digest(digest)
    artifact_type = request.query_params.get("artifactType") or None
    limit, last = page_request(request, ctx.settings)
    limit = min(limit, ctx.settings.referrers_page_size)
    descriptors, after = await ctx.store.manifests.list_referrers(
        name, subject, artifact_type, last, limit, MAX_REFERRERS_PAGE_BYTES - _INDEX_ENVELOPE
    ) if limit else ([], None)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    if after is not None:
        filters = {"artifactType": artifact_type} if artifact_type else {}
        headers.update(next_link(f"/v2/{name}/referrers/{subject}", limit, after, **filters))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    return Response(encode_listing(index), headers=headers, media_type=OCI_INDEX)
