"""POST /acr/v1/<repository>/_import: import an image from another registry over HTTP, for a
pipeline with push rights but no storage credentials (the CLI's `import` for operators).

The body follows ACR's ImportImageParameters (`source.registryUri`, `source.sourceImage`,
`source.credentials.username|password`, `targetTags`, `mode` NoForce|Force), with the target
repository in the path (so the token's push scope authorises it) and two additions:
`includeReferrers` and `platform`. ACR runs an import as an ARM operation; here it runs within
the request, up to IMPORT_BUDGET_SECONDS (the platform cuts a response at 230 s). An import cut
short answers 503 and leaves what it copied: sending the same request again goes on from there.

The caller chooses the address Berth connects to, so every address (each redirect's, the token
realm's, each name's resolution) is vetted by GuardedConnector: loopback, private and
link-local ones are refused unless BERTH_UPSTREAM_PRIVATE_HOSTS names the host. Blobs another
repository holds are linked without a fetch only for a caller who may read everything (an
admin); anyone else's import fetches them, so the digest check proves they had the bytes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response

from registry.api.http import Context, json_response, read_body
from registry.oci.errors import (
    MANIFEST_UNKNOWN,
    QUERY_UNSUPPORTED,
    UPSTREAM_FAILED,
    UPSTREAM_FORBIDDEN,
    RegistryError,
)
from registry.oci.names import validate_tag
from registry.ops.importer import Importer, parse_platform
from registry.ops.secrets import SecretReader, SecretUnavailable, key_vault_credential, login_with_set
from registry.ops.upstream import GuardedConnector, UpstreamClient, UpstreamError, UpstreamForbidden, parse_source
from registry.storage.errors import unavailable

MAX_BODY = 16 * 1024
IMPORT_BUDGET_SECONDS = 200


def _invalid(message: str) -> RegistryError:
    return RegistryError(QUERY_UNSUPPORTED, message)


def _text(document: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = document.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(f"{key} must be a non-empty string")
    return value


async def import_image(request: Request, ctx: Context, name: str) -> Response:
    try:
        document = json.loads(await read_body(request, MAX_BODY))
    except ValueError:
        raise _invalid("the body must be JSON: {source: {registryUri, sourceImage, credentials}, targetTags, "
                       "mode}") from None
    if not isinstance(document, dict) or not isinstance(document.get("source"), dict):
        raise _invalid("the body needs a source object")
    source_document = document["source"]
    credentials_document = source_document.get("credentials") or {}
    if not isinstance(credentials_document, dict):
        raise _invalid("source.credentials must be an object")
    username = _text(credentials_document, "username")
    password = _text(credentials_document, "password")
    if bool(username) != bool(password):
        raise _invalid("source.credentials needs both username and password")
    credential_set = _text(source_document, "credentialSet")
    if credential_set and username:
        raise _invalid("give source.credentials or source.credentialSet, not both")
    mode = document.get("mode", "NoForce")
    if mode not in ("NoForce", "Force"):
        raise _invalid("mode must be NoForce or Force")
    tags_document = document.get("targetTags") or []
    if not isinstance(tags_document, list) or not all(isinstance(tag, str) for tag in tags_document):
        raise _invalid("targetTags must be a list of tags (or repository:tag of this repository)")
    tags = []
    for tag in tags_document:
        repository, colon, plain = tag.rpartition(":")
        if colon and repository != name:
            raise _invalid(f"target {tag!r} is not in repository {name}")
        tags.append(validate_tag(plain if colon else tag))
    try:
        source = parse_source(_text(source_document, "sourceImage", required=True) or "",
                              _text(source_document, "registryUri"))
        platform = parse_platform(document["platform"]) if document.get("platform") else None
    except (ValueError, TypeError) as error:
        raise _invalid(str(error)) from None
    connector = GuardedConnector(ctx.settings.upstream_private_hosts)
    timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=60)
    grant = getattr(request.state, "grant", None)
    identity = key_vault_credential(ctx.settings.managed_identity_client_id)
    try:
        async with asyncio.timeout(IMPORT_BUDGET_SECONDS), \
                aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
            login = (username, password) if username and password else None
            if credential_set:
                reader = SecretReader(session, identity)
                login = await login_with_set(ctx.store.credential_sets, reader, credential_set, source)
            client = UpstreamClient(session, login, ctx.settings.max_manifest_bytes)
            # Blobs of other repositories are linked only for a caller who may read them all.
            importer = Importer(ctx.store, client, link_from_anywhere=grant is None or grant.everything)
            report = await importer.run(source, name, tags, mode == "Force", platform,
                                        bool(document.get("includeReferrers")))
    except SecretUnavailable as error:
        raise RegistryError(UPSTREAM_FAILED, f"credential set {credential_set}: {error}") from None
    except TimeoutError:
        raise unavailable(f"the import took longer than {IMPORT_BUDGET_SECONDS} s; send it again to go on "
                          "from what was copied") from None
    except UpstreamForbidden as error:
        raise RegistryError(UPSTREAM_FORBIDDEN, error.message) from None
    except UpstreamError as error:
        if credential_set and error.status in (401, 403):
            await ctx.store.credential_sets.record(credential_set, error.message)
        if error.status == 404:
            raise RegistryError(MANIFEST_UNKNOWN, error.message) from None
        raise RegistryError(UPSTREAM_FAILED, error.message) from None
    finally:
        await identity.close()
    if credential_set:
        await ctx.store.credential_sets.record(credential_set, None)
    return json_response(report.document())
